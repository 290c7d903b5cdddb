"""Generate the Grafana dashboard `dashboards/nanochat.json` with grafana-foundation-sdk.

    python -m dashboards.build           # write the dashboard
    python -m dashboards.build --check   # exit 1 when the committed dashboard is not what it would write

One dashboard over the metrics of the catalog (app/observability/catalog.py), one function per row: an
overview, traffic and errors, latency (whole request, time to first token, time per output token, queue
wait), throughput and batching, resources (CPU, memory, GPU) and the cost per million output tokens, and the
guardrail's decisions on chat requests, and retrieval (latency, cache hits, chunks and the ones
the guardrail caught). SLO lines come from loadtest/slo.yaml (read through alerts/build.py,
which also builds the generation routes' matcher from app/contract.py). Every query selects `job="$job"`;
the `datasource` and `job` variables make it importable into any Grafana with a Prometheus data source.

What this does not do: upload anything. docker-compose.yml provisions the file into a local Grafana;
infra/ owns the hosted one.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from alerts.build import GENERATION, SloError, load_slos, write_or_check
from app.contract import METRICS_JOB
from app.observability import catalog

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "dashboards" / "nanochat.json"
UID = "nanochat-service"
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "[$__rate_interval]"
QUANTILES = (0.5, 0.95, 0.99)


def sel(metric: str, *matchers: str) -> str:
    """`metric{job="$job",<matchers>}`."""
    return metric + "{" + ",".join(('job="$job"', *matchers)) + "}"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


def quantiles(histogram: catalog.Metric, *matchers: str) -> list[Query]:
    buckets = sel(f"{histogram.name}_bucket", *matchers)
    return [
        Query(f"histogram_quantile({q}, sum by (le) (rate({buckets}{RATE})))", f"p{round(q * 100)}")
        for q in QUANTILES
    ]


def targets(panel, queries: list[Query]):
    for i, query in enumerate(queries):
        ref = chr(ord("A") + i)
        panel.with_target(prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref))
    return panel


def slo_thresholds(limit: float | None) -> dashboard.ThresholdsConfig:
    steps = [models.Threshold(value=None, color="green")]
    if limit is not None:
        steps.append(models.Threshold(value=limit, color="red"))
    return dashboard.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(steps)


def graph(title: str, unit: str, description: str, queries: list[Query], slo: float | None = None):
    """A time series panel; `slo` draws the objective as a dashed red line."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .min(0)
        .fill_opacity(10)
        .span(12)
        .height(8)
        .thresholds(slo_thresholds(slo))
    )
    if slo is not None:
        style = common.GraphThresholdsStyleMode.DASHED
        panel.thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(style))
    return targets(panel, queries)


def big_number(title: str, unit: str, description: str, query: Query, slo: float | None = None):
    """A stat panel: the latest value with a sparkline, red past the SLO."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(4)
        .height(4)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE if slo is not None else common.BigValueColorMode.NONE)
        .thresholds(slo_thresholds(slo))
    )
    return targets(panel, [query])


# ---- the expressions more than one row shows -------------------------------------------------------
GENERATION_REQUESTS = sel(catalog.REQUESTS.name, GENERATION)
REQUEST_RATE = f"sum(rate({GENERATION_REQUESTS}{RATE}))"
# `or vector(0)`: no 5xx (or 429) series yet reads as 0%, not as "no data"
GENERATION_ERRORS = sel(catalog.REQUESTS.name, GENERATION, 'status_class="5xx"')
ERROR_SHARE = f"(sum(rate({GENERATION_ERRORS}{RATE})) or vector(0)) / {REQUEST_RATE}"
OUTPUT_TOKENS = f"sum(rate({sel(catalog.GENERATION_TOKENS.name)}{RATE}))"
COST = f"sum({sel(catalog.INSTANCE_PRICE.name)})\n  / ({OUTPUT_TOKENS} * 3600 > 0)\n  * 1e6"


def by(labels: str, metric: catalog.Metric, aggregation: str = "sum") -> str:
    """`<aggregation> by (<labels>) (rate(metric[$__rate_interval]))` for a counter, else of the gauge."""
    series = sel(metric.name)
    inner = f"rate({series}{RATE})" if metric.type == "counter" else series
    return f"{aggregation} by ({labels}) ({inner})"


# ---- the rows, in display order: (row title, panels) ---------------------------------------------------
def overview_row(slo: dict[str, float]) -> tuple[str, list]:
    return (
        "Overview",
        [
            big_number(
                "Ready instances",
                "none",
                "Workers whose /ready answers 200 (nanochat_ready).",
                Query(f"sum({sel(catalog.READY.name)})", "ready"),
            ),
            big_number(
                "Generation requests",
                "reqps",
                "Requests per second to the generation routes (all status classes).",
                Query(REQUEST_RATE, "requests/s"),
            ),
            big_number(
                "5xx share",
                "percentunit",
                "Share of generation requests answered 5xx; red past the SLO (error_rate_max).",
                Query(ERROR_SHARE, "5xx"),
                slo=slo["error_rate_max"],
            ),
            big_number(
                "p95 request latency",
                "s",
                "95th percentile of whole generation requests; red past the SLO (latency_p95_s).",
                quantiles(catalog.REQUEST_DURATION, GENERATION)[1],
                slo=slo["latency_p95_s"],
            ),
            big_number(
                "Output tokens/s",
                "short",
                "Tokens generated per second, all workers together.",
                Query(OUTPUT_TOKENS, "tokens/s"),
            ),
            big_number(
                "Cost per 1M output tokens",
                "currencyUSD",
                "Instance price per hour (NANOCHAT_INSTANCE_PRICE_PER_HOUR, summed over instances) "
                "divided by the tokens generated per hour, times a million. Empty without traffic.",
                Query(COST, "$/1M tokens"),
            ),
        ],
    )


def traffic_row(slo: dict[str, float]) -> tuple[str, list]:
    rejected = sel(catalog.REJECTED.name, 'reason="queue_full"')
    queue_full = f"(sum(rate({rejected}{RATE})) or vector(0)) / {REQUEST_RATE}"
    return (
        "Traffic and errors",
        [
            graph(
                "Request rate by route",
                "reqps",
                "HTTP requests answered per second, by route template.",
                [Query(by("route", catalog.REQUESTS), "{{route}}")],
            ),
            graph(
                "Responses by status class",
                "reqps",
                "Generation requests answered per second, by status class (429s are 4xx).",
                [Query(f"sum by (status_class) (rate({GENERATION_REQUESTS}{RATE}))", "{{status_class}}")],
            ),
            graph(
                "Error rate (5xx share)",
                "percentunit",
                "Share of generation requests answered 5xx; the dashed line is the SLO (error_rate_max).",
                [Query(ERROR_SHARE, "5xx share")],
                slo=slo["error_rate_max"],
            ),
            graph(
                "429 share (queue full)",
                "percentunit",
                "Share of generation requests turned away because the queue was full; the dashed line is "
                "the SLO (rejection_rate_max).",
                [Query(queue_full, "429 share")],
                slo=slo["rejection_rate_max"],
            ),
            graph(
                "Rejections by reason",
                "reqps",
                "Requests turned away per second: queue_full (429), not_ready (503), body_too_large "
                "(413), validation (400/422), unauthorized (401), deadline (504).",
                [Query(by("reason", catalog.REJECTED), "{{reason}}")],
            ),
            graph(
                "Finished generations by reason",
                "reqps",
                "Generation requests ended per second: stop, length, cancelled, deadline, error.",
                [Query(by("finish_reason", catalog.FINISHED), "{{finish_reason}}")],
            ),
        ],
    )


def latency_row(slo: dict[str, float]) -> tuple[str, list]:
    return (
        "Latency",
        [
            graph(
                "Request latency",
                "s",
                "Whole generation requests (a streamed reply to its last byte), p50/p95/p99; the dashed "
                "line is the p95 SLO (latency_p95_s).",
                quantiles(catalog.REQUEST_DURATION, GENERATION),
                slo=slo["latency_p95_s"],
            ),
            graph(
                "Time to first token",
                "s",
                "Queued to first token generated, p50/p95/p99; the dashed line is the p95 SLO (ttft_p95_s).",
                quantiles(catalog.TTFT),
                slo=slo["ttft_p95_s"],
            ),
            graph(
                "Time per output token",
                "s",
                "Per request, generation time after the first token divided by the tokens after it, "
                "p50/p95/p99; the dashed line is the p95 SLO (tpot_p95_s).",
                quantiles(catalog.TPOT),
                slo=slo["tpot_p95_s"],
            ),
            graph(
                "Queue wait",
                "s",
                "Queued to admitted into the decode batch, p50/p95/p99.",
                quantiles(catalog.QUEUE_WAIT),
            ),
        ],
    )


def throughput_row(slo: dict[str, float]) -> tuple[str, list]:
    batch = catalog.BATCH_SIZE.name
    return (
        "Throughput and batching",
        [
            graph(
                "Tokens per second",
                "short",
                "Output tokens generated and prompt tokens of finished requests, per second.",
                [
                    Query(OUTPUT_TOKENS, "output"),
                    Query(f"sum(rate({sel(catalog.PROMPT_TOKENS.name)}{RATE}))", "prompt"),
                ],
            ),
            graph(
                "Queue depth",
                "short",
                "Requests waiting for a batch slot, and how many may wait before a 429 (NANOCHAT_MAX_QUEUE).",
                [
                    Query(f"sum({sel(catalog.QUEUE_DEPTH.name)})", "waiting"),
                    Query(f"sum({sel(catalog.QUEUE_CAPACITY.name)})", "capacity"),
                ],
            ),
            graph(
                "Active sequences",
                "short",
                "Sequences in the decode batch, and the batch slots (NANOCHAT_MAX_BATCH).",
                [
                    Query(f"sum({sel(catalog.ACTIVE_SEQUENCES.name)})", "active"),
                    Query(f"sum({sel(catalog.BATCH_SLOTS.name)})", "slots"),
                ],
            ),
            graph(
                "Batch size",
                "short",
                "Sequences in each decode step: mean and p95.",
                [
                    Query(
                        f"sum(rate({sel(f'{batch}_sum')}{RATE})) / sum(rate({sel(f'{batch}_count')}{RATE}))",
                        "mean",
                    ),
                    quantiles(catalog.BATCH_SIZE)[1],
                ],
            ),
        ],
    )


def resources_row(slo: dict[str, float]) -> tuple[str, list]:
    return (
        "Resources and cost",
        [
            graph(
                "CPU",
                "short",
                "CPU cores busy with the worker processes (CPU seconds per second).",
                [Query(by("instance", catalog.PROCESS_CPU), "{{instance}}")],
            ),
            graph(
                "Memory",
                "bytes",
                "Resident memory of the worker processes and the container's memory limit (when it has one).",
                [
                    Query(by("instance", catalog.PROCESS_MEMORY), "resident {{instance}}"),
                    Query(by("instance", catalog.MEMORY_LIMIT, "max"), "limit {{instance}}"),
                ],
            ),
            graph(
                "GPU utilization",
                "percentunit",
                "Busy share of each GPU (NVML); empty without a GPU.",
                [Query(by("instance, gpu", catalog.GPU_UTILIZATION, "max"), "{{instance}} gpu {{gpu}}")],
            ),
            graph(
                "GPU memory",
                "bytes",
                "GPU memory used and total per GPU (NVML); empty without a GPU.",
                [
                    Query(
                        by("instance, gpu", catalog.GPU_MEMORY_USED, "max"), "used {{instance}} gpu {{gpu}}"
                    ),
                    Query(
                        by("instance, gpu", catalog.GPU_MEMORY_TOTAL, "max"), "total {{instance}} gpu {{gpu}}"
                    ),
                ],
            ),
            graph(
                "Cost per million output tokens",
                "currencyUSD",
                "Instance price per hour (NANOCHAT_INSTANCE_PRICE_PER_HOUR, summed over instances) "
                "divided by the tokens generated per hour, times a million: what a million output tokens "
                "cost at the current rate. Empty without traffic.",
                [Query(COST, "$/1M output tokens")],
            ),
            graph(
                "Trace export",
                "short",
                "Spans exported to the OTLP collector per second, by result (ok, failed). Failed spans are "
                "lost; requests are not affected. Empty while tracing is off.",
                [Query(f"sum by (result) (rate({sel(catalog.TRACE_EXPORT.name)}{RATE}))", "{{result}}")],
            ),
            graph(
                "Model load time",
                "s",
                "Time each worker took to load and warm its model.",
                [Query(by("instance", catalog.MODEL_LOAD, "max"), "{{instance}}")],
            ),
        ],
    )


def guardrail_row(slo: dict[str, float]) -> tuple[str, list]:
    decisions = f"rate({sel(catalog.GUARDRAIL_DECISIONS.name)}{RATE})"
    not_allowed = sel(catalog.GUARDRAIL_DECISIONS.name, 'action!="allow"')
    caught = f"rate({not_allowed}{RATE})"
    return (
        "Guardrail",
        [
            graph(
                "Guardrail decisions",
                "reqps",
                "Generation requests screened per second by the prompt-injection guardrail, by action: "
                "allow, flag (served, X-Guardrail: flagged), block (400 content_blocked). Empty while "
                "NANOCHAT_GUARDRAIL is off.",
                [Query(f"sum by (action) ({decisions})", "{{action}}")],
            ),
            graph(
                "Guardrail flagged or blocked share",
                "percentunit",
                "Share of screened requests the guardrail flagged or blocked. A jump is an attack, or a "
                "model or threshold (NANOCHAT_GUARDRAIL_THRESHOLD) that stops benign texts.",
                [Query(f"(sum({caught}) or vector(0)) / sum({decisions})", "flagged or blocked")],
            ),
        ],
    )


def rag_row(slo: dict[str, float]) -> tuple[str, list]:
    hits = f"sum by (cache) (rate({sel(catalog.RAG_CACHE_HITS.name)}{RATE}))"
    misses = f"sum by (cache) (rate({sel(catalog.RAG_CACHE_MISSES.name)}{RATE}))"
    caught = sel(catalog.RAG_GUARDRAIL.name, 'action!="allow"')
    return (
        "Retrieval",
        [
            graph(
                "Retrieval latency",
                "s",
                "Time to search an index for POST /v1/retrieve and chat requests with `retrieval` (query "
                "embedding, BM25, dense search, fusion; a cached result is a lookup). Empty while "
                "NANOCHAT_RAG_INDEXES names no index. Goal: p95 <= 20 ms for the bundled docs index.",
                quantiles(catalog.RAG_RETRIEVAL),
            ),
            graph(
                "Retrieval cache hit rate",
                "percentunit",
                "Share of lookups answered from the retriever's caches: query embeddings, and whole results "
                "(the same query, k and mode again).",
                [Query(f"{hits} / ({hits} + {misses} > 0)", "{{cache}}")],
            ),
            graph(
                "Retrieved chunks",
                "short",
                "Chunks returned per second by index, and chunks the guardrail flagged or dropped as likely "
                "indirect prompt injection (NANOCHAT_RAG_GUARDRAIL): a jump there is a poisoned document.",
                [
                    Query(by("index", catalog.RAG_RESULTS), "returned {{index}}"),
                    Query(f"sum by (action) (rate({caught}{RATE}))", "{{action}}"),
                ],
            ),
        ],
    )


ROWS = (overview_row, traffic_row, latency_row, throughput_row, resources_row, guardrail_row, rag_row)


def build(slo: dict[str, float]) -> dashboard.Dashboard:
    job = models.VariableOption(text=METRICS_JOB, value=METRICS_JOB, selected=True)
    board = (
        dashboard.Dashboard("nanochat service")
        .uid(UID)
        .description(
            "Traffic, errors, latency, throughput, batching, resources and cost of the nanochat service."
        )
        .tags(["nanochat", "llm"])
        .refresh("30s")
        .time("now-1h", "now")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("job")
            .label("Job")
            .datasource(DATASOURCE)
            .query(f"label_values({catalog.BUILD_INFO.name}, job)")
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .current(job)
        )
    )
    panel_id = 0
    for row in ROWS:
        title, panels = row(slo)
        panel_id += 1
        board.with_row(dashboard.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board.with_panel(panel.id(panel_id))
    return board


def render(slo: dict[str, float]) -> str:
    """The dashboard's JSON text."""
    return json.dumps(build(slo).build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the dashboard is not up to date")
    args = parser.parse_args(argv)
    try:
        text = render(load_slos())
    except SloError as e:
        print(f"dashboards.build: {e}", file=sys.stderr)
        return 2
    return write_or_check(OUTPUT, text, args.check, "dashboards.build")


if __name__ == "__main__":
    sys.exit(main())
