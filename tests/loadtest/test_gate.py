"""The release gate's judgement (loadtest/gate.py) on locust's own CSV format, at the edges of every SLO,
and its handling of bad SLO files and arguments. The runs against a real server are in test_gate_run.py."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.gate import (
    GATE_OBJECTIVES,
    GateError,
    evaluate,
    main,
    read_failures,
    read_stats,
    run_time_s,
)
from loadtest.slo import SLO_FILE, load_slos

STATS_HEADER = [
    "Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
    "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
    "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%",
]  # fmt: skip
SLO = load_slos()


def stats_row(kind: str, name: str, count: int, failures: int, p95_ms: float, size: float = 0) -> list:
    return [kind, name, count, failures, 1, 1, 1, 1, size, 1, 0, 1, 1, 1, 1, 1, p95_ms, 1, 1, 1, 1, 1]


def write_run(tmp_path: Path, rows: list[list], failures: list[tuple[str, str, str, int]]) -> Path:
    prefix = tmp_path / "run"
    with open(f"{prefix}_stats.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(STATS_HEADER)
        writer.writerows(rows)
        writer.writerow(stats_row("", "Aggregated", 0, 0, 0))
    with open(f"{prefix}_failures.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Method", "Name", "Error", "Occurrences", "First Seen", "Last Seen"])
        writer.writerows([(*failure, 0, 0) for failure in failures])
    return prefix


def judge(tmp_path: Path, *, e2e_p95_ms=1000.0, ttft_p95_ms=100.0, tpot_p95_ms=10.0, requests=1000,
          errors=0, rejected=0, tokens_per_request=64.0, duration_s=60.0) -> dict[str, bool]:  # fmt: skip
    failed = errors + rejected
    # locust averages content size over every request, failures (0 tokens) included
    size = tokens_per_request * (requests - failed) / requests
    rows = [
        stats_row("LLM", "e2e", requests, failed, e2e_p95_ms, size),
        stats_row("LLM", "ttft", requests - failed, 0, ttft_p95_ms),
        stats_row("LLM", "tpot", requests - failed, 0, tpot_p95_ms),
        stats_row("POST", "/v1/chat/completions", requests, failed, 5),
    ]
    failures = [
        ("LLM", "e2e", "RuntimeError('HTTP 503')", errors),
        ("LLM", "e2e", "RuntimeError('HTTP 429')", rejected),
    ]
    failures.append(("POST", "/v1/chat/completions", "HTTP 500", 7))  # not an LLM entry: ignored
    prefix = write_run(tmp_path, rows, [f for f in failures if f[3]])
    checks = evaluate(read_stats(prefix), read_failures(prefix), SLO, duration_s)
    return {check.objective: check.passed for check in checks}


def test_a_healthy_run_passes_every_objective(tmp_path: Path) -> None:
    assert judge(tmp_path) == dict.fromkeys(GATE_OBJECTIVES, True)


def edges(objective: str) -> tuple[dict, dict]:
    """judge() arguments that put `objective` exactly at its limit, and just past it (1000 requests,
    60 s, so shares and rates come out exact)."""
    limit = SLO[objective]
    if objective.endswith("_p95_s"):
        field = {"latency": "e2e_p95_ms", "ttft": "ttft_p95_ms", "tpot": "tpot_p95_ms"}[
            objective.split("_")[0]
        ]
        return {field: limit * 1000}, {field: limit * 1000 + 10}
    if objective in ("error_rate_max", "rejection_rate_max"):
        field = "errors" if objective == "error_rate_max" else "rejected"
        return {field: round(limit * 1000)}, {field: round(limit * 1000) + 1}
    tokens = limit * 60 / 1000  # min_output_tokens_per_s
    return {"tokens_per_request": tokens}, {"tokens_per_request": tokens * 0.9}


@pytest.mark.parametrize("objective", GATE_OBJECTIVES)
def test_each_objective_holds_at_its_limit_and_breaks_past_it(tmp_path: Path, objective: str) -> None:
    at_limit, past_limit = edges(objective)
    assert judge(tmp_path, **at_limit)[objective] is True
    past = judge(tmp_path, **past_limit)
    assert [name for name, ok in past.items() if not ok] == [objective]  # it broke, and nothing else


def test_429s_are_rejections_not_errors(tmp_path: Path) -> None:
    verdict = judge(tmp_path, rejected=400)
    assert verdict["rejection_rate_max"] is False and verdict["error_rate_max"] is True


def test_a_run_without_chat_requests_fails(tmp_path: Path) -> None:
    prefix = write_run(tmp_path, [stats_row("GET", "/health", 10, 0, 3)], [])
    checks = evaluate(read_stats(prefix), read_failures(prefix), SLO, 30.0)
    assert not any(check.passed for check in checks)
    assert all(check.figure is None for check in checks)


def test_run_time_parsing() -> None:
    assert run_time_s("30s") == 30 and run_time_s("2m") == 120 and run_time_s("1h30m5s") == 5405
    for bad in ("30", "s", "1.5m", "-3s", ""):
        with pytest.raises(GateError):
            run_time_s(bad)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("latency_p95_s: [1]\n", "missing ttft_p95_s"),
        ("- a\n- b\n", "expected a mapping"),
        ("{unclosed\n", "not valid YAML"),
        (
            SLO_FILE.read_text().replace("ttft_p95_s: 2.0", "ttft_p95_s: fast"),
            "ttft_p95_s must be a positive number",
        ),
        (
            SLO_FILE.read_text().replace("error_rate_max: 0.01", "error_rate_max: -1"),
            "error_rate_max must be",
        ),
    ],
)
def test_bad_slo_files_are_refused_in_one_line(tmp_path: Path, capsys, content: str, message: str) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(content)
    assert main(["--host", "http://127.0.0.1:9", "--slo", str(slo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gate: ") and message in err and err.count("\n") == 1


def test_bad_arguments_and_an_unreachable_host_exit_2(capsys) -> None:
    assert main(["--host", "http://127.0.0.1:9", "--users", "0"]) == 2
    assert main(["--host", "http://127.0.0.1:9", "--run-time", "soon"]) == 2
    assert main(["--host", "http://127.0.0.1:9", "--wait-ready", "0"]) == 2
    assert "did not answer 200" in capsys.readouterr().err


@pytest.mark.slow
def test_locust_loads_the_folder_from_any_directory(tmp_path: Path) -> None:
    """`locust -f loadtest/` imports every file of the folder (the gate and the SLO loader too): it must work
    from another working directory, against any URL (here a closed port: requests fail, locust runs)."""
    folder = Path(__file__).resolve().parents[2] / "loadtest"
    command = [
        sys.executable, "-m", "locust", "-f", str(folder), "--headless", "-t", "2s", "-u", "2", "-r", "2",
        "--host", "http://127.0.0.1:9", "--only-summary", "--exit-code-on-error", "0",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "LLM" in run.stdout + run.stderr  # the chat users ran and reported their own entries
