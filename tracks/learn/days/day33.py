"""Day 33: the learner's metrics, read back from the Prometheus text exposition of a fresh registry."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure

OBSERVED = (("benign", 0.004), ("benign", 0.02), ("injection", 0.3))
GIVEN = "observe('benign', 0.004), observe('benign', 0.02), observe('injection', 0.3)"


def samples(registry) -> dict[tuple[str, tuple], float]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def check(module: ModuleType) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = module.ClassifyMetrics(registry)
    for label, seconds in OBSERVED:
        metrics.observe(label, seconds)
    got = samples(registry)
    names = sorted({name for name, _ in got})
    counts = {
        dict(labels).get("label"): v
        for (name, labels), v in got.items()
        if name == "nanochat_classify_requests_total"
    }
    if not counts:
        hint = "a Counter named 'nanochat_classify_requests' (the client adds _total)"
        if "nanochat_classify_requests_total_total" in names:
            hint = "drop the _total from the name: prometheus_client adds it to counters"
        elif "nanochat_classify_requests" in names:
            hint = "it is a counter (only goes up): Counter, not Gauge"
        raise Failure(
            "no counter nanochat_classify_requests_total",
            GIVEN,
            "nanochat_classify_requests_total",
            f"metrics {names}",
            hint,
        )
    if counts != {"benign": 2.0, "injection": 1.0}:
        hint = "labelnames=['label'] and .labels(label=label).inc() for each text"
        if None in counts:
            hint = "the counter needs the label: Counter(..., ['label']) and .labels(label=label)"
        elif counts.get("benign") == 1.0:
            hint = "increment (inc) on every request; setting it to 1 does not count"
        raise Failure(
            "the request counts by label are wrong", GIVEN, "benign 2, injection 1", str(counts), hint
        )
    count = got.get(("nanochat_classify_seconds_count", ()))
    total = got.get(("nanochat_classify_seconds_sum", ()))
    if count != 3.0 or total is None or abs(total - 0.324) > 1e-9:
        hint = "a Histogram named nanochat_classify_seconds, observe(seconds) once per text"
        if total is not None and abs(total - 324.0) < 1e-6:
            hint = "Prometheus' unit is seconds: observe(seconds), not milliseconds"
        raise Failure(
            "the latency histogram is wrong",
            GIVEN,
            "count 3, sum 0.324 (seconds)",
            f"count {count}, sum {total}",
            hint,
        )
    le_01 = got.get(("nanochat_classify_seconds_bucket", (("le", "0.01"),)))
    if le_01 != 1.0:
        raise Failure(
            "the histogram's buckets are not the ones asked for",
            GIVEN,
            "1 observation ≤ 0.01 s",
            f"bucket le=0.01: {le_01}",
            "Histogram(..., buckets=BUCKETS)",
        )


HINTS = (
    "Two metrics from prometheus_client, both with registry=registry; observe updates both.",
    "Counter('nanochat_classify_requests', help, ['label'], registry=registry) (the _total is added); "
    "Histogram('nanochat_classify_seconds', help, buckets=BUCKETS, registry=registry).",
    "observe: self.requests.labels(label=label).inc(); self.seconds.observe(seconds).",
)
EXERCISE = Exercise(
    33,
    "service_metric",
    "a metric added to the service",
    "production",
    HINTS,
    (
        "app/observability/metrics.py, catalog.py: the service's metrics "
        "(tests/app/observability/test_metrics_catalog.py)",
    ),
    check,
)
