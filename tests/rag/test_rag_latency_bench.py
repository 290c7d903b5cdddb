"""bench/rag_latency.py prints one JSON object with p50/p95 before and after caching, per mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import rag_latency
from nanochat.rag.index import build_index

pytest.importorskip("bm25s")
pytest.importorskip("faiss")


def test_the_benchmark_reports_latency_before_and_after_caching(corpus: Path, tmp_path: Path, capsys):
    build_index([corpus], tmp_path / "idx")
    assert rag_latency.main(["--index", str(tmp_path / "idx"), "--repeats", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["goal_p95_ms"] == 20.0 and report["queries"] == len(rag_latency.QUERIES)
    for mode in ("bm25", "dense", "hybrid"):
        for phase in ("uncached", "cached"):
            figures = report[mode][phase]
            assert 0 <= figures["p50_ms"] <= figures["p95_ms"]
        assert set(report[mode]["quality"]) == {"recall@1", "recall@5", "mrr"}
    results = report["cache_stats"]["results"]
    assert results["hits"] == 3 * 2 * len(
        rag_latency.QUERIES
    )  # every timed cached search after the warm round
    assert results["misses"] == 3 * len(rag_latency.QUERIES)
    assert isinstance(report["goal_met_cached"], bool)
