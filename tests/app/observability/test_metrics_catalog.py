"""app/observability/metrics.py against the catalog (app/observability/catalog.py): the definitions (names,
types, labels, help, buckets, multiprocess modes) and what /metrics exposes after real requests to the
in-process service; the Metrics table of docs/observability.md is the one generated from the catalog."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from app.observability import catalog as metric_catalog
from app.observability import metrics

HELLO = {"messages": [{"role": "user", "content": "Hello! Who are you?"}], "max_tokens": 6}
CHAT = "/v1/chat/completions"


def defined_metrics() -> dict[str, MetricWrapperBase]:
    """Every metric the module defines, by exposed name (counters with _total)."""
    found = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    found.append(metrics.memory_limit_gauge())  # made on first use
    return {m._name + ("_total" if m._type == "counter" else ""): m for m in found}


def scrape(client) -> dict[str, dict]:
    """family name -> {"type", "samples": [(name, labels, value)]} from GET /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {}
    for family in text_string_to_metric_families(response.text):
        name = family.name + ("_total" if family.type == "counter" else "")
        samples = [(sample.name, sample.labels, sample.value) for sample in family.samples]
        families[name] = {"type": family.type, "samples": samples}
    return families


def value(families: dict, sample: str, **labels: str) -> float:
    """The value of the series `sample{labels}` (0 when there is none)."""
    samples = [s for family in families.values() for s in family["samples"]]
    return sum(v for name, lab, v in samples if name == sample and lab == labels)


def test_definitions_match_the_catalog() -> None:
    catalog = metric_catalog.by_name()
    defined = defined_metrics()
    assert sorted(defined) == sorted(catalog)
    assert len(catalog) == len(metric_catalog.CATALOG), "a name is in the catalog twice"
    for name, documented in catalog.items():
        metric = defined[name]
        assert metric._type == documented.type, name
        assert tuple(metric._labelnames) == documented.labels, name
        assert metric._documentation == documented.help, name
        if documented.type == "gauge":
            assert metric._multiprocess_mode == documented.mode, name
        if documented.type == "histogram":
            assert tuple(metric._upper_bounds[:-1]) == documented.buckets, name  # +Inf is added


def test_names_follow_prometheus_conventions() -> None:
    for metric in metric_catalog.CATALOG:
        assert metric.name.startswith("nanochat_"), metric.name
        if metric.unit:
            assert metric.client_name.endswith(f"_{metric.unit}"), f"{metric.name} does not end in its unit"


def test_the_catalog_refuses_inconsistent_definitions() -> None:
    with pytest.raises(ValueError, match="ends in _total"):
        metric_catalog.Metric("nanochat_x", "counter", "X")
    with pytest.raises(ValueError, match="multiprocess mode"):
        metric_catalog.Metric("nanochat_x", "gauge", "X")
    with pytest.raises(ValueError, match="buckets"):
        metric_catalog.Metric("nanochat_x", "histogram", "X")
    with pytest.raises(ValueError, match="labels it does not have"):
        metric_catalog.Metric("nanochat_x_total", "counter", "X", values={"reason": ("a",)})


def test_docs_table_is_the_generated_one(capsys) -> None:
    assert metric_catalog.main(["--check"]) == 0, capsys.readouterr().err


def test_check_fails_on_an_edited_docs_table(tmp_path, capsys) -> None:
    doc = tmp_path / "observability.md"
    text = metric_catalog.DOC.read_text()
    doc.write_text(text.replace("| `nanochat_ready` | gauge |", "| `nanochat_ready` | counter |"))
    assert doc.read_text() != text
    assert metric_catalog.main(["--check", "--doc", str(doc)]) == 1
    assert "the metrics table is stale" in capsys.readouterr().err
    assert metric_catalog.main(["--doc", str(doc)]) == 0  # rewrites it
    assert doc.read_text() == text


def test_histogram_buckets_follow_the_genai_conventions() -> None:
    # gen_ai.server.time_to_first_token and gen_ai.server.request.duration (OpenTelemetry semconv)
    ttft, request, tpot = (
        metric_catalog.TTFT_BUCKETS,
        metric_catalog.REQUEST_BUCKETS,
        metric_catalog.TPOT_BUCKETS,
    )
    assert ttft[:3] == (0.001, 0.005, 0.01) and ttft[-1] == 10.0
    assert request[:2] == (0.01, 0.02) and 81.92 in request
    # finer than the conventions' 10 ms at the low end: a CPU decode step is about 1 ms
    assert tpot[0] < 0.001 and {0.01, 0.025, 0.05, 0.1} <= set(tpot)
    for buckets in (ttft, request, tpot):
        assert list(buckets) == sorted(set(buckets))


def test_exposition_after_real_requests(traced) -> None:
    client = traced.client
    before = scrape(client)
    usage = Counter()
    ok = client.post(CHAT, json=HELLO)
    assert ok.status_code == 200
    usage.update(ok.json()["usage"])
    streamed = client.post(CHAT, json={**HELLO, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    completion = client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 4})
    usage.update(completion.json()["usage"])
    assert client.post(CHAT, json={"messages": []}).status_code == 400
    assert client.get("/no/such/route").status_code == 404
    assert client.get("/v1/models/demo").status_code == 200
    too_big = client.post(CHAT, content=b"x" * 1_100_000, headers={"content-type": "application/json"})
    assert too_big.status_code == 413
    after = scrape(client)

    catalog = metric_catalog.by_name()
    for name, documented in catalog.items():
        if documented.optional:
            continue
        assert name in after, f"{name} is not exposed"
        assert after[name]["type"] == documented.type, name
        for sample, labels, _ in after[name]["samples"]:
            extra = {"le"} if sample.endswith("_bucket") else set()
            assert set(labels) == set(documented.labels) | extra, (sample, labels)
    if not metrics.Gpus().handles:  # no GPU here: no GPU series at all
        for name in ("nanochat_gpu_utilization_ratio", "nanochat_gpu_memory_used_bytes"):
            assert not after.get(name, {"samples": []})["samples"]

    def delta(family: str, **labels: str) -> float:
        return value(after, family, **labels) - value(before, family, **labels)

    requests = "nanochat_requests_total"
    assert delta(requests, route=CHAT, method="POST", status_class="2xx") == 2
    assert delta(requests, route=CHAT, method="POST", status_class="4xx") == 2  # 400 and 413 (before routing)
    assert delta(requests, route="/v1/completions", method="POST", status_class="2xx") == 1
    assert delta(requests, route="other", method="GET", status_class="4xx") == 1
    assert delta(requests, route="/v1/models/{model_id:path}", method="GET", status_class="2xx") == 1
    assert delta("nanochat_rejected_requests_total", reason="validation") == 1
    assert delta("nanochat_rejected_requests_total", reason="body_too_large") == 1
    finished = sum(
        delta("nanochat_finished_requests_total", finish_reason=r) for r in metric_catalog.FINISH_REASONS
    )
    assert finished == 3
    assert delta("nanochat_time_to_first_token_seconds_count") == 3
    assert delta("nanochat_queue_wait_seconds_count") == 3
    assert delta("nanochat_request_duration_seconds_count", route=CHAT) == 4
    assert delta("nanochat_batch_size_count") >= 3  # one decode step at least per request
    # the streamed request's tokens: whatever the two counters grew by beyond the others' usage
    assert delta("nanochat_prompt_tokens_total") > usage["prompt_tokens"]
    assert delta("nanochat_generation_tokens_total") > usage["completion_tokens"]
    assert value(after, "nanochat_ready") == 1
    assert value(after, "nanochat_batch_slots") == 16 and value(after, "nanochat_queue_capacity") == 64
    assert value(after, "nanochat_active_sequences") == 0 and value(after, "nanochat_queue_depth") == 0
    assert value(after, "nanochat_model_load_seconds") > 0
    assert value(after, "nanochat_process_resident_memory_bytes") > 10_000_000
    assert value(after, "nanochat_process_cpu_seconds_total") > 0
    assert value(after, "nanochat_instance_price_dollars_per_hour") == pytest.approx(0.16)
    (build,) = after["nanochat_build_info"]["samples"]
    assert build[1]["model"] == "demo" and build[1]["version"] == "0.1.0" and build[1]["git_sha"]


def test_openmetrics_when_the_scraper_asks(traced) -> None:
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    response = traced.client.get("/metrics", headers=accept)
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert "nanochat_requests_total{" in response.text


def test_cgroup_memory_limit(tmp_path) -> None:
    assert metrics.cgroup_memory_limit(tmp_path) is None  # no cgroup files
    (tmp_path / "memory.max").write_text("max\n")
    assert metrics.cgroup_memory_limit(tmp_path) is None  # v2, no limit
    (tmp_path / "memory.max").write_text("4294967296\n")
    assert metrics.cgroup_memory_limit(tmp_path) == 4 * 2**30
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert metrics.cgroup_memory_limit(v1) is None  # v1's "no limit"
    (v1 / "memory" / "memory.limit_in_bytes").write_text("2147483648\n")
    assert metrics.cgroup_memory_limit(v1) == 2 * 2**30


def test_git_sha_from_the_environment_first(monkeypatch) -> None:
    monkeypatch.setenv("GIT_SHA", "abc1234")
    assert metrics.git_sha() == "abc1234"
    monkeypatch.delenv("GIT_SHA")
    sha = metrics.git_sha()
    assert sha == "unknown" or len(sha) == 40
    assert metrics.git_sha(metrics.REPO_ROOT / "no-such-folder") == "unknown"
