"""Generate the Grafana dashboard `dashboards/nanochat.json` with grafana-foundation-sdk.

    python dashboards/build.py           # write the dashboard
    python dashboards/build.py --check   # exit 1 when the committed dashboard is not what it would write

One dashboard over the metrics of docs/observability.md: traffic and errors, latency (whole request, time to
first token, time per output token, queue wait), throughput and batching, resources (CPU, memory, GPU) and
the cost per million output tokens, and the guardrail's decisions on chat requests. SLO lines come from
loadtest/slo.yaml (read through alerts/build.py, which also owns the list of generation routes). Every query
selects `job="$job"`; the `datasource` and `job` variables make it importable into any Grafana with a
Prometheus data source.

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make alerts/build.py importable
from alerts.build import GENERATION_ROUTES, SloError, load_slos, write_or_check  # noqa: E402

OUTPUT = ROOT / "dashboards" / "nanochat.json"
UID = "nanochat-service"
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
GENERATION = 'route=~"' + "|".join(GENERATION_ROUTES) + '"'
RATE = "[$__rate_interval]"
QUANTILES = (0.5, 0.95, 0.99)


def sel(metric: str, *matchers: str) -> str:
    """`metric{job="$job",<matchers>}`."""
    return metric + "{" + ",".join(('job="$job"', *matchers)) + "}"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


def quantiles(histogram: str, *matchers: str) -> list[Query]:
    buckets = sel(f"{histogram}_bucket", *matchers)
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


def rows(slo: dict[str, float]) -> list[tuple[str, list]]:
    """(row title, panels) in display order."""
    requests = sel("nanochat_requests_total", GENERATION)
    request_rate = f"sum(rate({requests}{RATE}))"
    errors = sel("nanochat_requests_total", GENERATION, 'status_class="5xx"')
    # `or vector(0)`: no 5xx (or 429) series yet reads as 0%, not as "no data"
    error_share = f"(sum(rate({errors}{RATE})) or vector(0)) / {request_rate}"
    rejected = sel("nanochat_rejected_requests_total", 'reason="queue_full"')
    queue_full = f"(sum(rate({rejected}{RATE})) or vector(0)) / {request_rate}"
    output_tokens = f"sum(rate({sel('nanochat_generation_tokens_total')}{RATE}))"
    cost = (
        f"sum({sel('nanochat_instance_price_dollars_per_hour')})\n  / ({output_tokens} * 3600 > 0)\n  * 1e6"
    )
    p95_latency = quantiles("nanochat_request_duration_seconds", GENERATION)[1]
    decisions = f"rate({sel('nanochat_guardrail_decisions_total')}{RATE})"
    not_allowed = sel("nanochat_guardrail_decisions_total", 'action!="allow"')
    caught = f"rate({not_allowed}{RATE})"
    return [
        (
            "Overview",
            [
                big_number(
                    "Ready instances",
                    "none",
                    "Workers whose /ready answers 200 (nanochat_ready).",
                    Query(f"sum({sel('nanochat_ready')})", "ready"),
                ),
                big_number(
                    "Generation requests",
                    "reqps",
                    "Requests per second to the generation routes (all status classes).",
                    Query(request_rate, "requests/s"),
                ),
                big_number(
                    "5xx share",
                    "percentunit",
                    "Share of generation requests answered 5xx; red past the SLO (error_rate_max).",
                    Query(error_share, "5xx"),
                    slo=slo["error_rate_max"],
                ),
                big_number(
                    "p95 request latency",
                    "s",
                    "95th percentile of whole generation requests; red past the SLO (latency_p95_s).",
                    p95_latency,
                    slo=slo["latency_p95_s"],
                ),
                big_number(
                    "Output tokens/s",
                    "short",
                    "Tokens generated per second, all workers together.",
                    Query(output_tokens, "tokens/s"),
                ),
                big_number(
                    "Cost per 1M output tokens",
                    "currencyUSD",
                    "Instance price per hour (NANOCHAT_INSTANCE_PRICE_PER_HOUR, summed over instances) "
                    "divided by the tokens generated per hour, times a million. Empty without traffic.",
                    Query(cost, "$/1M tokens"),
                ),
            ],
        ),
        (
            "Traffic and errors",
            [
                graph(
                    "Request rate by route",
                    "reqps",
                    "HTTP requests answered per second, by route template.",
                    [Query(f"sum by (route) (rate({sel('nanochat_requests_total')}{RATE}))", "{{route}}")],
                ),
                graph(
                    "Responses by status class",
                    "reqps",
                    "Generation requests answered per second, by status class (429s are 4xx).",
                    [Query(f"sum by (status_class) (rate({requests}{RATE}))", "{{status_class}}")],
                ),
                graph(
                    "Error rate (5xx share)",
                    "percentunit",
                    "Share of generation requests answered 5xx; the dashed line is the SLO (error_rate_max).",
                    [Query(error_share, "5xx share")],
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
                    [
                        Query(
                            f"sum by (reason) (rate({sel('nanochat_rejected_requests_total')}{RATE}))",
                            "{{reason}}",
                        )
                    ],
                ),
                graph(
                    "Finished generations by reason",
                    "reqps",
                    "Generation requests ended per second: stop, length, cancelled, deadline, error.",
                    [
                        Query(
                            f"sum by (finish_reason) (rate({sel('nanochat_finished_requests_total')}{RATE}))",
                            "{{finish_reason}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Latency",
            [
                graph(
                    "Request latency",
                    "s",
                    "Whole generation requests (a streamed reply to its last byte), p50/p95/p99; the dashed "
                    "line is the p95 SLO (latency_p95_s).",
                    quantiles("nanochat_request_duration_seconds", GENERATION),
                    slo=slo["latency_p95_s"],
                ),
                graph(
                    "Time to first token",
                    "s",
                    "Queued to first token generated, p50/p95/p99; the dashed line is the p95 SLO "
                    "(ttft_p95_s).",
                    quantiles("nanochat_time_to_first_token_seconds"),
                    slo=slo["ttft_p95_s"],
                ),
                graph(
                    "Time per output token",
                    "s",
                    "Per request, generation time after the first token divided by the tokens after it, "
                    "p50/p95/p99; the dashed line is the p95 SLO (tpot_p95_s).",
                    quantiles("nanochat_time_per_output_token_seconds"),
                    slo=slo["tpot_p95_s"],
                ),
                graph(
                    "Queue wait",
                    "s",
                    "Queued to admitted into the decode batch, p50/p95/p99.",
                    quantiles("nanochat_queue_wait_seconds"),
                ),
            ],
        ),
        (
            "Throughput and batching",
            [
                graph(
                    "Tokens per second",
                    "short",
                    "Output tokens generated and prompt tokens of finished requests, per second.",
                    [
                        Query(output_tokens, "output"),
                        Query(f"sum(rate({sel('nanochat_prompt_tokens_total')}{RATE}))", "prompt"),
                    ],
                ),
                graph(
                    "Queue depth",
                    "short",
                    "Requests waiting for a batch slot, and how many may wait before a 429 "
                    "(NANOCHAT_MAX_QUEUE).",
                    [
                        Query(f"sum({sel('nanochat_queue_depth')})", "waiting"),
                        Query(f"sum({sel('nanochat_queue_capacity')})", "capacity"),
                    ],
                ),
                graph(
                    "Active sequences",
                    "short",
                    "Sequences in the decode batch, and the batch slots (NANOCHAT_MAX_BATCH).",
                    [
                        Query(f"sum({sel('nanochat_active_sequences')})", "active"),
                        Query(f"sum({sel('nanochat_batch_slots')})", "slots"),
                    ],
                ),
                graph(
                    "Batch size",
                    "short",
                    "Sequences in each decode step: mean and p95.",
                    [
                        Query(
                            f"sum(rate({sel('nanochat_batch_size_sum')}{RATE}))"
                            f" / sum(rate({sel('nanochat_batch_size_count')}{RATE}))",
                            "mean",
                        ),
                        quantiles("nanochat_batch_size")[1],
                    ],
                ),
            ],
        ),
        (
            "Resources and cost",
            [
                graph(
                    "CPU",
                    "short",
                    "CPU cores busy with the worker processes (CPU seconds per second).",
                    [
                        Query(
                            f"sum by (instance) (rate({sel('nanochat_process_cpu_seconds_total')}{RATE}))",
                            "{{instance}}",
                        )
                    ],
                ),
                graph(
                    "Memory",
                    "bytes",
                    "Resident memory of the worker processes and the container's memory limit (when it has "
                    "one).",
                    [
                        Query(
                            f"sum by (instance) ({sel('nanochat_process_resident_memory_bytes')})",
                            "resident {{instance}}",
                        ),
                        Query(
                            f"max by (instance) ({sel('nanochat_memory_limit_bytes')})", "limit {{instance}}"
                        ),
                    ],
                ),
                graph(
                    "GPU utilization",
                    "percentunit",
                    "Busy share of each GPU (NVML); empty without a GPU.",
                    [
                        Query(
                            f"max by (instance, gpu) ({sel('nanochat_gpu_utilization_ratio')})",
                            "{{instance}} gpu {{gpu}}",
                        )
                    ],
                ),
                graph(
                    "GPU memory",
                    "bytes",
                    "GPU memory used and total per GPU (NVML); empty without a GPU.",
                    [
                        Query(
                            f"max by (instance, gpu) ({sel('nanochat_gpu_memory_used_bytes')})",
                            "used {{instance}} gpu {{gpu}}",
                        ),
                        Query(
                            f"max by (instance, gpu) ({sel('nanochat_gpu_memory_total_bytes')})",
                            "total {{instance}} gpu {{gpu}}",
                        ),
                    ],
                ),
                graph(
                    "Cost per million output tokens",
                    "currencyUSD",
                    "Instance price per hour (NANOCHAT_INSTANCE_PRICE_PER_HOUR, summed over instances) "
                    "divided by the tokens generated per hour, times a million: what a million output tokens "
                    "cost at the current rate. Empty without traffic.",
                    [Query(cost, "$/1M output tokens")],
                ),
                graph(
                    "Model load time",
                    "s",
                    "Time each worker took to load and warm its model.",
                    [Query(f"max by (instance) ({sel('nanochat_model_load_seconds')})", "{{instance}}")],
                ),
            ],
        ),
        (
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
        ),
    ]


def build(slo: dict[str, float]) -> dashboard.Dashboard:
    job = models.VariableOption(text="nanochat", value="nanochat", selected=True)
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
            .query("label_values(nanochat_build_info, job)")
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .current(job)
        )
    )
    panel_id = 0
    for title, panels in rows(slo):
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
    parser = argparse.ArgumentParser(prog="dashboards/build.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the dashboard is not up to date")
    args = parser.parse_args(argv)
    try:
        text = render(load_slos())
    except SloError as e:
        print(f"dashboards/build.py: {e}", file=sys.stderr)
        return 2
    return write_or_check(OUTPUT, text, args.check, "dashboards/build.py")


if __name__ == "__main__":
    sys.exit(main())
