"""Cold start: how long `python -m app` takes from launch to `/ready` 200, with the classifier on and off. Run

    python -m bench.cold_start --checkpoint models/demo --repeats 3     # any checkpoint folder

(`bench.table`'s cold-start row uses the same launch, for this tree and an earlier commit.)

Each repeat starts one server with the shipped classifier (`models/fortunes`, the default) and one with
`NANOCHAT_CLASSIFIER=` (off), one after the other, and records for each: seconds from the launch to the
first `/health` 200 (the process serves HTTP), to `/ready` 200, the server's CPU seconds at that moment
(`ready_cpu_s`, all its threads: what the start costs, which load on a shared machine does not inflate as
it does the wall time), and, with the classifier on, to the classifier's own readiness in `/stats`
(`parts.classifier.state` "ready"; from a server that does not report it, unknown). The guardrail stays
off, as in the default settings.

It prints one JSON object: the medians, the ratio ready-with-classifier / ready-without (1.0: `/ready`
does not wait for the classifier), the goal (`/ready` within 2 s for the demo model on an idle machine)
and the load average when it started (a loaded machine makes every figure larger). A measurement, not a
test: it fails only when a server cannot be started (one line on stderr, exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 180  # only bounds a hang
POLL_S = 0.02
GOAL_READY_S = 2.0
FIGURES = ("health_s", "ready_s", "ready_cpu_s")


class BenchError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


def answers_200(url: str) -> bool:
    response = _get(url)
    return response is not None and response.status_code == 200


def classifier_state(url: str) -> str | None:
    """The classifier's state in /stats, or None where the server does not report one."""
    stats = _get(f"{url}/stats")
    if stats is None or stats.status_code != 200:
        return None
    return ((stats.json().get("parts") or {}).get("classifier") or {}).get("state")


def cpu_seconds(pid: int) -> float | None:
    """CPU time process `pid` has used so far, all its threads, user and system (from /proc/PID/stat);
    None where there is no /proc. On a busy machine it says what a start costs better than its wall time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (man 5 proc)


def server_env(
    checkpoint: str, root: Path = REPO_ROOT, settings: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a server of the tree at `root` on `checkpoint`: the caller's `NANOCHAT_*`, `HOST`
    and `PORT` left out, `settings` (NANOCHAT_* variables) added, JSON logs (last_line reads them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOCHAT_") and k not in ("HOST", "PORT")}
    env.update({"NANOCHAT_CHECKPOINT": checkpoint, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"})
    env["NANOCHAT_LOG_FORMAT"] = "json"
    env.update(settings or {})
    return env


def launch(env: dict[str, str], workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    """Start `python -m app` on a free port, logging to a file in `workdir`: (process, URL, log path)."""
    port = free_port()
    command = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)]
    log_path = workdir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}", log_path


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_once(
    checkpoint: str,
    classifier: bool,
    workdir: Path,
    root: Path = REPO_ROOT,
    follow_classifier: bool = True,
    settings: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """Launch one server of the tree at `root` (with `settings` on top of the defaults), time its way to
    /health, /ready and (classifier on and `follow_classifier`) the classifier's readiness."""
    settings = {**(settings or {}), **({} if classifier else {"NANOCHAT_CLASSIFIER": ""})}
    env = server_env(checkpoint, root, settings)
    marks: dict[str, float | None] = dict.fromkeys((*FIGURES, "classifier_ready_s"))
    started = time.monotonic()
    process, url, log_path = launch(env, workdir)
    try:
        while time.monotonic() - started < READY_TIMEOUT_S:
            if process.poll() is not None:
                raise BenchError(f"the server exited ({process.returncode}): {last_line(log_path)}")
            if marks["health_s"] is None and answers_200(f"{url}/health"):
                marks["health_s"] = time.monotonic() - started
            if marks["health_s"] is not None and marks["ready_s"] is None and answers_200(f"{url}/ready"):
                marks["ready_s"] = time.monotonic() - started
                marks["ready_cpu_s"] = cpu_seconds(process.pid)
            if marks["ready_s"] is not None:
                if not (classifier and follow_classifier):
                    break
                state = classifier_state(url)
                if state == "ready":
                    marks["classifier_ready_s"] = time.monotonic() - started
                    break
                if state is None:  # a server that does not report it: it was ready with /ready
                    break
                if state == "failed":
                    raise BenchError(f"the classifier failed to load: {last_line(log_path)}")
            time.sleep(POLL_S)
        else:
            raise BenchError(f"the server was not ready after {READY_TIMEOUT_S} s: {last_line(log_path)}")
    finally:
        stop(process)
    return {name: None if value is None else round(value, 3) for name, value in marks.items()}


def last_line(log_path: Path) -> str:
    """Why the server stopped: its last ERROR line's message, else its last line (the log's folder is gone
    once the benchmark ends, so the reason goes into the benchmark's own message)."""
    lines = log_path.read_text(errors="replace").strip().splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("severity") in ("ERROR", "CRITICAL"):
            return str(record.get("message"))
    return lines[-1] if lines else "(the server wrote nothing)"


def median(runs: list[dict[str, float | None]], name: str) -> float | None:
    values = [run[name] for run in runs if run[name] is not None]
    return round(statistics.median(values), 3) if values else None


def run(checkpoint: str, repeats: int) -> dict:
    load_before = os.getloadavg()[0]
    if Path(checkpoint).exists():  # a folder relative to here (the servers run in a scratch folder)
        checkpoint = str(Path(checkpoint).resolve())
    on, off = [], []
    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as tmp:
        for _ in range(repeats):
            on.append(start_once(checkpoint, True, Path(tmp)))
            off.append(start_once(checkpoint, False, Path(tmp)))
    summary = {
        "classifier_on": {name: median(on, name) for name in (*FIGURES, "classifier_ready_s")},
        "classifier_off": {name: median(off, name) for name in FIGURES},
    }
    ready_on, ready_off = summary["classifier_on"]["ready_s"], summary["classifier_off"]["ready_s"]
    return {
        "checkpoint": checkpoint,
        "repeats": repeats,
        **summary,
        "ready_on_over_off": round(ready_on / ready_off, 2) if ready_on and ready_off else None,
        "goal_ready_s": GOAL_READY_S,
        "ready_within_goal": ready_on is not None and ready_on <= GOAL_READY_S,
        "load_average_1m": round(load_before, 2),
        "cpus": os.cpu_count(),
        "runs": {"classifier_on": on, "classifier_off": off},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(REPO_ROOT / "models" / "demo"))
    parser.add_argument("--repeats", type=int, default=3, help="servers started per setting")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not Path(args.checkpoint).is_dir():
        parser.error(f"--checkpoint: no such folder {args.checkpoint}")
    try:
        result = run(args.checkpoint, args.repeats)
    except (BenchError, OSError) as e:
        print(f"bench_cold_start: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
