"""Day 33: a service metric (reference: app/observability/metrics.py, one source of truth for names)."""

from prometheus_client import CollectorRegistry, Counter, Histogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ClassifyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "nanochat_classify_requests", "Texts classified, by predicted label", ["label"], registry=registry
        )
        self.seconds = Histogram(
            "nanochat_classify_seconds", "Time to classify one text", buckets=BUCKETS, registry=registry
        )

    def observe(self, label: str, seconds: float) -> None:
        self.requests.labels(label=label).inc()
        self.seconds.observe(seconds)
