"""The release gate: a bounded headless locust run against a base URL, judged by the SLOs.

    python -m loadtest.gate --host https://candidate---svc.run.app --run-time 60s

It runs `locust -f loadtest/locustfile.py` headless for `--run-time` with `--users` users, writes the CSV
files and an HTML report to `--out`, then reads the LLM entries the chat users report (see
loadtest/locustfile.py) and checks every objective of `loadtest/slo.yaml`:

| objective | figure |
|---|---|
| `latency_p95_s` | p95 of `e2e` (whole replies, streamed or not) |
| `ttft_p95_s` | p95 of `ttft` |
| `tpot_p95_s` | p95 of `tpot` |
| `error_rate_max` | failed chat requests other than 429, over all chat requests |
| `rejection_rate_max` | chat requests answered 429, over all chat requests |
| `min_output_tokens_per_s` | completion tokens of successful replies over `--run-time` |

Given an API key (`LOADTEST_API_KEY`), the gate first checks that the server refuses `/v1/models` without it
(401): a candidate that lost its key fails before any load is sent.

Exit status: 0 when every objective holds, 1 when one is broken (or the run produced no chat requests, or
the server does not require its API key),
2 for bad arguments or an unreachable host. A summary table goes to stdout, `summary.json` beside the
reports. The objectives the alert rules use are the same file's (alerts/build.py reads it too).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.contract import READY_PATH
from loadtest._auth import auth_headers
from loadtest.slo import SLO_FILE, SloError, load_slos

HERE = Path(__file__).resolve().parent
LLM = "LLM"
HTTP_STATUS = re.compile(r"HTTP (\d{3})")
GATE_OBJECTIVES = (  # the objectives a load test measures (the others are for the alerts only)
    "latency_p95_s",
    "ttft_p95_s",
    "tpot_p95_s",
    "error_rate_max",
    "rejection_rate_max",
    "min_output_tokens_per_s",
)


class GateError(Exception):
    """Bad arguments, a bad SLO file or an unusable host: one line, exit 2."""


@dataclass(frozen=True)
class Check:
    objective: str
    figure: float | None
    limit: float
    passed: bool
    unit: str

    def row(self) -> str:
        shown = "none" if self.figure is None else f"{self.figure:.4g}"
        sign = ">=" if self.objective.startswith("min_") else "<="
        verdict = "ok" if self.passed else "BROKEN"
        return f"{self.objective:<26} {shown:>10} {sign} {self.limit:<10g} {self.unit:<9} {verdict}"


def read_stats(prefix: Path) -> dict[str, dict[str, str]]:
    """`{prefix}_stats.csv` rows of the LLM entries, by name."""
    path = Path(f"{prefix}_stats.csv")
    if not path.is_file():
        raise GateError(f"locust wrote no {path.name}: see the locust output above")
    with path.open(newline="", encoding="utf-8") as f:
        return {row["Name"]: row for row in csv.DictReader(f) if row["Type"] == LLM}


def read_failures(prefix: Path) -> dict[str, int]:
    """Failed chat requests (`e2e` entries) by kind: "429" or "error"."""
    path = Path(f"{prefix}_failures.csv")
    counts = {"429": 0, "error": 0}
    if not path.is_file():
        return counts
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["Method"] != LLM or row["Name"] != "e2e":
                continue
            status = HTTP_STATUS.search(row["Error"])
            kind = "429" if status and status.group(1) == "429" else "error"
            counts[kind] += int(row["Occurrences"])
    return counts


def _p95_s(row: dict[str, str] | None) -> float | None:
    if not row or int(row["Request Count"]) - int(row["Failure Count"]) <= 0:
        return None
    return float(row["95%"]) / 1000


def evaluate(
    stats: dict[str, dict[str, str]], failures: dict[str, int], slo: dict[str, float], duration_s: float
) -> list[Check]:
    """Every objective against the run's figures. A figure that could not be measured breaks its
    objective: a gate must not pass on a run that measured nothing."""
    e2e = stats.get("e2e")
    requests = int(e2e["Request Count"]) if e2e else 0
    succeeded = requests - (int(e2e["Failure Count"]) if e2e else 0)
    tokens = float(e2e["Average Content Size"]) * requests if e2e else 0.0  # failed requests count 0
    figures = {
        "latency_p95_s": _p95_s(e2e),
        "ttft_p95_s": _p95_s(stats.get("ttft")),
        "tpot_p95_s": _p95_s(stats.get("tpot")),
        "error_rate_max": failures["error"] / requests if requests else None,
        "rejection_rate_max": failures["429"] / requests if requests else None,
        "min_output_tokens_per_s": tokens / duration_s if succeeded and duration_s > 0 else None,
    }
    units = {"min_output_tokens_per_s": "tokens/s", "error_rate_max": "share", "rejection_rate_max": "share"}
    checks = []
    for objective in GATE_OBJECTIVES:
        figure, limit = figures[objective], slo[objective]
        if figure is None:
            passed = False
        elif objective.startswith("min_"):
            passed = figure >= limit
        else:
            passed = figure <= limit
        checks.append(Check(objective, figure, limit, passed, units.get(objective, "s")))
    return checks


def wait_ready(host: str, timeout_s: float, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    url = f"{host}{READY_PATH}"
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5):
                return
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = str(getattr(e, "reason", e))
        if time.monotonic() >= deadline:
            raise GateError(f"{url} did not answer 200 within {timeout_s:g} s (last: {last})")
        time.sleep(0.5)


def unauthenticated_status(host: str, headers: dict[str, str]) -> int:
    """The HTTP status of `GET /v1/models` with every header but the API key (the Cloud Run identity token
    stays, so only the app's own check answers)."""
    without_key = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"{host}/v1/models", headers=without_key), timeout=10
        ):
            return 200
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError) as e:
        raise GateError(f"{host}/v1/models did not answer: {getattr(e, 'reason', e)}") from e


def run_time_s(text: str) -> float:
    """Seconds in a locust run time like 30s, 2m or 1h30m."""
    if not re.fullmatch(r"(\d+[hms])+", text):
        raise GateError(f"--run-time must look like 30s, 2m or 1h30m, got {text!r}")
    scale = {"h": 3600, "m": 60, "s": 1}
    return float(sum(int(n) * scale[unit] for n, unit in re.findall(r"(\d+)([hms])", text)))


def run_locust(args: argparse.Namespace, prefix: Path) -> None:
    """Run locust headless (it stops by itself after --run-time)."""
    command = [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
        "--host", args.host, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
        "--run-time", args.run_time, "--stop-timeout", "30", "--csv", str(prefix),
        "--html", str(prefix.parent / "report.html"), "--only-summary", "--exit-code-on-error", "0",
    ]  # fmt: skip
    env = {**os.environ, "LOADTEST_MAX_TOKENS": str(args.max_tokens)}
    finished = subprocess.run(command, env=env, check=False)
    if finished.returncode != 0:
        raise GateError(f"locust exited with status {finished.returncode}: see its output above")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.gate", description="Run the locust release gate against a server."
    )
    parser.add_argument("--host", required=True, help="base URL of the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--users", type=int, default=8, help="concurrent users (default 8)")
    parser.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second (default 4)")
    parser.add_argument("--run-time", default="30s", help="how long to run, locust syntax (default 30s)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens per chat request (default 64)")
    parser.add_argument("--slo", default=str(SLO_FILE), help="the SLO file (default loadtest/slo.yaml)")
    parser.add_argument("--out", default="build/loadtest", help="folder for CSV/HTML reports")
    parser.add_argument("--wait-ready", type=float, default=60.0, help="seconds to wait for /ready (60)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.users < 1 or args.spawn_rate <= 0 or args.max_tokens < 1:
            raise GateError("--users, --spawn-rate and --max-tokens must be positive")
        duration_s = run_time_s(args.run_time)
        args.host = args.host.rstrip("/")
        slo = load_slos(args.slo)
        headers = auth_headers()
        wait_ready(args.host, args.wait_ready, headers)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        prefix = out / "loadtest"
        # Given an API key, the candidate must refuse requests without it: a revision that lost its key
        # (a secret not mounted) would otherwise pass the gate and serve the API to anyone.
        if os.environ.get("LOADTEST_API_KEY"):
            status = unauthenticated_status(args.host, headers)
            if status != 401:
                print(f"gate: {args.host}/v1/models answers {status} without the API key (expected 401)")
                print("FAILED: the server does not require its API key")
                summary = {"host": args.host, "passed": False, "checks": [], "api_key_required": False}
                (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
                return 1
        run_locust(args, prefix)
        checks = evaluate(read_stats(prefix), read_failures(prefix), slo, duration_s)
    except (GateError, SloError) as e:
        print(f"gate: {e}", file=sys.stderr)
        return 2
    passed = all(check.passed for check in checks)
    print(f"\nrelease gate against {args.host} ({args.users} users, {args.run_time}):")
    print("\n".join(check.row() for check in checks))
    print("PASSED" if passed else "FAILED: an objective is broken")
    summary = {
        "host": args.host,
        "passed": passed,
        "duration_s": round(duration_s, 1),
        "checks": [check.__dict__ for check in checks],
        "reports": {"csv_prefix": str(prefix), "html": str(out / "report.html")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
