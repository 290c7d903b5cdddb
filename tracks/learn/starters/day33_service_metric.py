"""Day 33: a metric added to the service, in Prometheus' format.

Write `ClassifyMetrics(registry)`: it registers, in the given prometheus_client registry, a counter
`nanochat_classify_requests_total` with a `label` label (the predicted label) and a histogram
`nanochat_classify_seconds` (latency in seconds, buckets 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1).
`observe(label, seconds)` records one classified text.
"""

from prometheus_client import CollectorRegistry, Counter, Histogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ClassifyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # TODO: the counter (by label) and the histogram, both registered in `registry`
        raise NotImplementedError("the two metrics")

    def observe(self, label: str, seconds: float) -> None:
        # TODO: count one request for `label`; record its latency
        raise NotImplementedError("recording one request")
