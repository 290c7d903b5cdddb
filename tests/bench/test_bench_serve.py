"""`python -m bench.serve`: a tiny real run against a real server gives every figure, all positive;
plus its pure parts (percentiles, the OpenAPI probe, the SSE splitter, argument errors) without a server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.observability import catalog
from bench.serve import (
    RSS_METRIC,
    SseSplitter,
    chat_request_fields,
    constrained_request,
    main,
    percentile,
    process_memory,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO_ROOT / "models" / "demo"


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert percentile(list(range(101)), 95) == 95


def test_request_fields_follow_refs() -> None:
    openapi = {
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "requestBody": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Chat"}}}
                    }
                }
            }
        },
        "components": {"schemas": {"Chat": {"properties": {"messages": {}, "ignore_eos": {}}}}},
    }
    assert chat_request_fields(openapi) == {"messages", "ignore_eos"}
    assert chat_request_fields({"paths": {}}) == set()


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--concurrency", "1,zero"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_serve: ") and err.count("\n") == 1


def test_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    assert main(["--url", f"http://127.0.0.1:{port}", "--wait-ready", "0"]) == 1
    err = capsys.readouterr().err
    assert "is not ready" in err and err.count("\n") == 1


def test_the_rss_metric_is_the_catalogs() -> None:
    assert catalog.PROCESS_MEMORY.name == RSS_METRIC


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_process_memory_reads_a_process_status() -> None:
    memory = process_memory(os.getpid())
    assert memory is not None and memory["peak_rss_bytes"] >= memory["rss_bytes"] > 1 << 20
    assert process_memory(2**22 + 1) is None  # above Linux's largest pid: no such process


@pytest.mark.integration
def test_tiny_run_reports_every_figure(base_url: str) -> None:
    command = [
        sys.executable, "-m", "bench.serve", "--url", base_url, "--checkpoint", str(CHECKPOINT),
        "--concurrency", "1,2", "--requests-per-level", "2", "--max-tokens", "8", "--json",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)

    assert set(result["levels"]) == {"1", "2"}
    for level in result["levels"].values():
        assert level["errors"] == 0, level["error_samples"]
        assert level["requests"] == 2
        assert level["output_tokens"] > 0 and level["output_tokens_per_s"] > 0
        for figure in ("ttft_ms", "tpot_ms", "e2e_ms"):
            assert level[figure]["p50"] > 0 and level[figure]["p95"] >= level[figure]["p50"], figure
    assert result["engine"]["decode_batch1_tokens_per_s"] > 0
    assert result["engine"]["request_tokens_per_s"] > 0
    memory = result["server_memory"]  # no --server-pid: the server's own gauge from /metrics
    assert memory["source"] == f"/metrics {RSS_METRIC}"
    assert memory["idle"]["rss_bytes"] > 1 << 20 and memory["idle"]["peak_rss_bytes"] is None
    assert set(memory["after_level"]) == {"1", "2"}
    assert all(m["rss_bytes"] > 1 << 20 for m in memory["after_level"].values())
    assert result["ratios"]["service_1stream_vs_engine"] > 0
    assert result["ratios"]["service_1stream_decode_vs_engine_decode"] > 0
    assert "streams16_vs_streams1" not in result["ratios"]  # no 16-stream level in this run
    assert set(result["targets"]) == {"streams16_vs_streams1", "service_1stream_vs_engine"}


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_sse_splitter_gives_the_same_payloads_whatever_the_block_sizes(cuts: list[int]) -> None:
    stream = (
        b": a comment\n\n"
        b'data: {"a": 1}\n\n'
        b"event: x\r\ndata: two\r\n\r\n"
        b'data: {"text": "caf\xc3\xa9 \\n"}\n\n'
        b"data: [DONE]\n\n"
    )
    splitter, payloads, start = SseSplitter(), [], 0
    for size in [*cuts, len(stream)]:
        payloads += splitter.feed(stream[start : start + size])
        start += size
    assert payloads == [b'{"a": 1}', b"two", b'{"text": "caf\xc3\xa9 \\n"}', b"[DONE]"]


@pytest.mark.parametrize(("share", "expected"), [(0.0, 0), (0.5, 5), (0.25, 2), (1.0, 10)])
def test_json_share_spreads_the_constrained_requests(share: float, expected: int) -> None:
    chosen = [i for i in range(10) if constrained_request(i, share)]
    assert len(chosen) == expected
    if share == 0.5:
        assert chosen == [1, 3, 5, 7, 9]


def test_json_share_runs_each_level_again_partly_constrained(base_url: str) -> None:
    command = [
        sys.executable, "-m", "bench.serve", "--url", base_url, "--concurrency", "2",
        "--requests-per-level", "4", "--max-tokens", "8", "--json-share", "0.5", "--json",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    mixed = result["json_levels"]["2"]
    assert mixed["errors"] == 0 and mixed["json_share"] == 0.5 and mixed["requests"] == 4, mixed
    assert result["levels"]["2"]["json_share"] == 0.0
    assert result["ratios"]["json_share_vs_free_streams2"] > 0
    assert result["targets"]["json_share_vs_free"] == 0.85
