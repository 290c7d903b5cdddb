"""Chaos: inject the failures of docs/design.md's failure-mode table into a local gunicorn serving the demo
model, under a steady trickle of chat requests, and report what held. Run

    make chaos                                             # every fault, report in docs/experiments/chaos/
    python -m bench.chaos --faults worker_sigkill --out /tmp/chaos

Each fault starts its own gunicorn (app/gunicorn.conf.py, `NANOCHAT_*` from a clean environment, the
classifier off) in a process group of its own, sends short greedy chat requests from a few client threads,
polls `/ready` every 0.1 s, injects the fault, and checks its expectation:

- `corrupt_checkpoint`: the weights file cut in half. With on_load_failure=exit gunicorn stops with a non-zero
  status and one clear line (no traceback); with `unready` it stays up: `/health` 200, `/ready` 503
  `load_failed`, chat 503.
- `worker_sigkill`: SIGKILL the busier of two workers under load (the one with requests in flight). At most
  the requests it had in flight fail, `/ready` stays 200 (the other worker answers), gunicorn starts a new
  worker, and requests after it succeed.
- `otlp_down`: traces exported to a closed port. No request fails, `/ready` stays 200, and the spans that
  could not go are counted as failed (`nanochat_trace_export_spans_total`, what NanochatTraceExportFailing
  reads).
- `disk_full_logs`: gunicorn's stdout and stderr (every log line) go to /dev/full, which fails every write
  with ENOSPC. No request fails. (/dev/full needs no root mount; a full tmpfs would behave the same.)
- `disk_full_checkpoint`: a checkpoint save under RLIMIT_FSIZE (1 MiB; SIGXFSZ ignored, so writes fail
  with EFBIG, as they would with ENOSPC) into a copy of the demo model's folder. The save fails, leaves no
  partial file, and the folder still serves its previous step.
- `cpu_starvation`: two busy loops per core beside the server for a while. No request fails, `/ready`
  stays 200; the report gives the latency before and during.
- `burst_10x`: the client threads go from 2 to 20 for a while against a small batch and queue (4 + 8). The
  excess is shed with 429 and Retry-After, never a 5xx; `/ready` stays 200; after the burst every request
  succeeds again.

The report: `chaos.json` (every figure) and `chaos.md` (one row per fault: held or not, requests ok and
failed by status, `/ready` transitions, recovery time, and what was checked). Exit 1 if any fault did not
hold. A measurement on a shared machine: durations are fixed, the figures depend on the load (recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO_ROOT / "models" / "demo"
GUNICORN = Path(sys.executable).parent / "gunicorn"
DEFAULT_OUT = REPO_ROOT / "docs" / "experiments" / "chaos"
READY_TIMEOUT_S = 180  # only bounds a hang: loads are slow on shared cores
REQUEST_TIMEOUT_S = 60
POLL_S = 0.1
FSIZE_LIMIT = 1 << 20
STARTED = "Application startup complete."  # uvicorn's line, once a worker has loaded its model and listens
BODY = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0}


class ChaosError(Exception):
    """The harness itself could not run a fault (not a fault that did not hold)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """One gunicorn in its own process group, with a clean environment."""

    def __init__(self, work: Path, env: dict[str, str], log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log or work / "gunicorn.log"
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NANOCHAT_", "OTEL_")) and k not in ("HOST", "PORT")
        }
        environment = {
            **inherited,
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "PORT": str(self.port),
            "NANOCHAT_CHECKPOINT": str(DEMO_MODEL),
            "NANOCHAT_THREADS": "1",
            "NANOCHAT_CLASSIFIER": "",
            "NANOCHAT_LOG_FORMAT": "text",
            **env,
        }
        command = [str(GUNICORN), "-c", str(REPO_ROOT / "app" / "gunicorn.conf.py")]
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                command,
                cwd=work,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        """The log so far; "" when it went to a device (/dev/full reads as endless zero bytes)."""
        try:
            return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        except OSError:
            return ""

    def workers(self) -> set[int]:
        """The master's live children, from /proc."""
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid and fields[0] != "Z":
                children.add(int(stat.parent.name))
        return children

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ChaosError(f"gunicorn exited ({self.process.returncode}):\n{self.log()[-2000:]}")
            if ready_code(self.url) == "ready":
                return
            time.sleep(POLL_S)
        raise ChaosError(f"gunicorn was not ready after {timeout} s:\n{self.log()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def ready_code(url: str) -> str:
    """ "ready", the error code of a 503 /ready, or "down" when nothing answers."""
    try:
        response = httpx.get(f"{url}/ready", timeout=5)
    except httpx.HTTPError:
        return "down"
    if response.status_code == 200:
        return "ready"
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return str(response.status_code)


@dataclass
class Outcome:
    start: float  # seconds since the fault's clock started
    end: float
    status: str  # the HTTP status, or the exception's class name
    retry_after: bool = False


class Watch:
    """Background /ready polling and client threads sending BODY, each recorded against one clock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.t0 = time.monotonic()
        self.transitions: list[tuple[float, str]] = []
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clients: list[tuple[threading.Thread, threading.Event]] = []
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _poll(self) -> None:
        while not self._stop.is_set():
            code = ready_code(self.url)
            if not self.transitions or self.transitions[-1][1] != code:
                self.transitions.append((round(self.now(), 2), code))
            self._stop.wait(POLL_S)

    def _client(self, stop: threading.Event) -> None:
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S) as client:
            while not stop.is_set() and not self._stop.is_set():
                start = self.now()
                try:
                    response = client.post("/v1/chat/completions", json=BODY)
                    status, retry = str(response.status_code), "retry-after" in response.headers
                except httpx.HTTPError as e:
                    status, retry = type(e).__name__, False
                with self._lock:
                    self.outcomes.append(Outcome(round(start, 3), round(self.now(), 3), status, retry))
                if status != "200":
                    stop.wait(0.2)  # back off briefly, as a polite client would

    def clients(self, n: int) -> None:
        """Run exactly `n` client threads (start more, or stop the newest)."""
        while len(self._clients) < n:
            stop = threading.Event()
            thread = threading.Thread(target=self._client, args=(stop,), daemon=True)
            thread.start()
            self._clients.append((thread, stop))
        while len(self._clients) > n:
            thread, stop = self._clients.pop()
            stop.set()
            thread.join(REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self._stop.set()
        self.clients(0)
        self._poller.join(10)

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.start < end]


@dataclass
class FaultResult:
    name: str
    held: bool
    checked: list[str]  # the expectations, each as a sentence
    problems: list[str]  # the expectations that failed, with the evidence
    requests: dict[str, int]  # status -> count
    ready_transitions: list[tuple[float, str]]
    recovery_s: float | None  # from the fault to the service being whole again (see each fault)
    figures: dict = field(default_factory=dict)
    duration_s: float = 0.0


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    return dict(sorted(Counter(o.status for o in outcomes).items()))


def p50(outcomes: list[Outcome]) -> float | None:
    times = [o.end - o.start for o in outcomes if o.status == "200"]
    return round(statistics.median(times), 3) if times else None


def first_ok_after(watch: Watch, t: float) -> float | None:
    """Seconds from `t` to the end of the first request started after `t` that succeeded."""
    ok = [o.end for o in watch.between(t) if o.status == "200"]
    return round(min(ok) - t, 2) if ok else None


class Checks:
    def __init__(self) -> None:
        self.checked: list[str] = []
        self.problems: list[str] = []

    def expect(self, condition: bool, what: str, evidence: object = "") -> None:
        self.checked.append(what)
        if not condition:
            saw = " ".join(str(evidence).split())  # one line, for the Markdown list
            self.problems.append(f"{what} (saw: {saw[:400]})")

    def all_succeed(self, watch: Watch) -> None:
        outcomes = counts(watch.outcomes)
        self.expect(watch.outcomes and set(outcomes) == {"200"}, "every request succeeds", outcomes)

    def stays_ready(self, watch: Watch) -> None:
        ready = {c for _, c in watch.transitions} == {"ready"}
        self.expect(ready, "/ready stays 200 throughout", watch.transitions)


def result(name: str, checks: Checks, watch: Watch | None, recovery: float | None, **figures) -> FaultResult:
    return FaultResult(
        name=name,
        held=not checks.problems,
        checked=checks.checked,
        problems=checks.problems,
        requests=counts(watch.outcomes) if watch else {},
        ready_transitions=watch.transitions if watch else [],
        recovery_s=recovery,
        figures=figures,
    )


def copy_demo(work: Path) -> Path:
    """A copy of the demo model's folder that a fault may damage."""
    target = work / "model"
    shutil.copytree(DEMO_MODEL, target)
    return target


def corrupt_checkpoint(work: Path, seconds: float) -> FaultResult:
    model = copy_demo(work)
    weights = next(model.glob("model_*.pt"))
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    checks = Checks()
    t0 = time.monotonic()
    exiting = Service(work, {"NANOCHAT_CHECKPOINT": str(model)}, log=work / "exit.log")
    try:
        code = exiting.process.wait(timeout=READY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    exit_s = round(time.monotonic() - t0, 2)
    exiting.stop()
    log = exiting.log()
    checks.expect(code not in (None, 0), "on_load_failure=exit: gunicorn stops with a non-zero status", code)
    checks.expect(f"the model failed to load from {model}" in log, "the log names the folder", log[-300:])
    checks.expect("Traceback" not in log, "the log has no traceback", log[-300:])

    staying = Service(work, {"NANOCHAT_CHECKPOINT": str(model), "NANOCHAT_ON_LOAD_FAILURE": "unready"})
    watch = Watch(staying.url)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not watch.transitions or watch.transitions[-1][1] in ("down", "loading"):
            if time.monotonic() > deadline or staying.process.poll() is not None:
                break
            time.sleep(POLL_S)
        watch.clients(1)
        time.sleep(seconds)
        watch.clients(0)
        try:
            health: int | str = httpx.get(f"{staying.url}/health", timeout=5).status_code
        except httpx.HTTPError as e:
            health = type(e).__name__
    finally:
        watch.close()
        staying.stop()
    last = watch.transitions[-1][1] if watch.transitions else None
    statuses = set(counts(watch.outcomes))
    checks.expect(health == 200, "on_load_failure=unready: /health answers 200", health)
    checks.expect(last == "load_failed", "/ready answers 503 load_failed", watch.transitions)
    checks.expect(statuses == {"503"}, "chat answers 503, never 500", counts(watch.outcomes))
    return result("corrupt_checkpoint", checks, watch, None, exit_status=code, exit_s=exit_s)


def worker_sigkill(work: Path, seconds: float) -> FaultResult:
    service = Service(work, {"NANOCHAT_WORKERS": "2"})
    checks = Checks()
    try:
        service.wait_ready()
        before = service.workers()
        watch = Watch(service.url)
        watch.clients(2)
        time.sleep(seconds / 2)
        victim = busiest(before)  # a worker with requests in flight, not one idle by chance
        started = service.log().count(STARTED)
        os.kill(victim, signal.SIGKILL)
        killed_at = watch.now()
        respawn = serving = None  # a new worker process exists; it has loaded its model and accepts
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and serving is None:
            now = service.workers()
            if respawn is None and len(now) == 2 and victim not in now:
                respawn = round(watch.now() - killed_at, 2)
            if respawn is not None and service.log().count(STARTED) > started:
                serving = round(watch.now() - killed_at, 2)
            time.sleep(POLL_S / 2)
        time.sleep(seconds)
        watch.clients(0)
        watch.close()
    finally:
        service.stop()
    failed = [o for o in watch.outcomes if o.status != "200"]
    settled = killed_at + (serving or 0) + seconds / 2
    checks.expect(
        len(failed) <= 2, "at most the requests in flight on the killed worker fail", counts(failed)
    )
    checks.expect(
        all(o.start <= killed_at + 1 for o in failed),
        "no request started over 1 s after the kill fails",
        failed[:3],
    )
    checks.expect(
        serving is not None, "gunicorn starts a new worker, which loads and serves", service.log()[-300:]
    )
    checks.stays_ready(watch)
    late = watch.between(settled)
    checks.expect(
        late and all(o.status == "200" for o in late), "requests after the respawn succeed", counts(late)
    )
    return result(
        "worker_sigkill", checks, watch, serving, killed_at_s=round(killed_at, 2), respawn_s=respawn
    )


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def busiest(pids: set[int], over_s: float = 1.0) -> int:
    """The process of `pids` that used the most CPU over the next `over_s` seconds."""
    start = {pid: cpu_ticks(pid) for pid in pids}
    time.sleep(over_s)
    return max(sorted(pids), key=lambda pid: cpu_ticks(pid) - start[pid])


def steady(
    name: str,
    work: Path,
    env: dict[str, str],
    seconds: float,
    log: Path | None = None,
    probe: Callable[[Service, Checks], None] | None = None,
) -> FaultResult:
    """A fault present from the start (its environment or its log file): steady load from 2 clients; every
    request must succeed and /ready stay 200; `probe` checks the running service after the load."""
    service = Service(work, env, log)
    checks = Checks()
    try:
        service.wait_ready()
        watch = Watch(service.url)
        watch.clients(2)
        time.sleep(seconds)
        watch.clients(0)
        watch.close()
        alive = service.process.poll() is None
        if probe is not None and alive:
            probe(service, checks)
    finally:
        service.stop()
    checks.expect(alive, "gunicorn is still running", service.process.returncode)
    checks.all_succeed(watch)
    checks.stays_ready(watch)
    return result(name, checks, watch, None, p50_s=p50(watch.outcomes))


def otlp_down(work: Path, seconds: float) -> FaultResult:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export (and fail) often
    }
    return steady("otlp_down", work, env, seconds, probe=spans_counted_failed)


def spans_counted_failed(service: Service, checks: Checks) -> None:
    """What NanochatTraceExportFailing reads: the spans that could not be exported, counted as failed."""
    from prometheus_client.parser import text_string_to_metric_families

    from app.observability.catalog import TRACE_EXPORT

    text = httpx.get(f"{service.url}/metrics", timeout=30).text
    spans = {
        sample.labels.get("result"): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == TRACE_EXPORT.name
    }
    failed, ok = spans.get("failed", 0), spans.get("ok", 0)
    checks.expect(failed > 0 and ok == 0, "the lost spans are counted as failed (the alert's signal)", spans)


def disk_full_logs(work: Path, seconds: float) -> FaultResult:
    if not Path("/dev/full").exists():
        raise ChaosError("/dev/full does not exist on this machine")
    return steady("disk_full_logs", work, {"NANOCHAT_LOG_LEVEL": "debug"}, seconds, log=Path("/dev/full"))


SAVE_UNDER_LIMIT = """
import resource, signal, sys
from pathlib import Path
from nanochat.checkpoint import model_path, read_meta, read_state_dict, save_checkpoint
folder, step, limit = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
state, meta = read_state_dict(model_path(folder, step)), read_meta(folder, step)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    save_checkpoint(folder, step + 1, state, meta)
except Exception as e:  # a CheckpointError (nanochat.checkpoint turns torch.save's RuntimeError into one)
    print(f"save failed: {type(e).__name__}: {e}")
    sys.exit(1)
"""


def save_on_full_disk(folder: Path, limit: int = FSIZE_LIMIT) -> tuple[int, str, list[str]]:
    """Save the checkpoint of `folder` again, as its next step, in a process whose files may not grow past
    `limit` bytes: (exit status, the error it printed, files that are new in `folder` afterwards)."""
    step = int(next(folder.glob("model_*.pt")).stem.split("_")[1])
    before = {p.name for p in folder.iterdir()}
    save = subprocess.run(
        [sys.executable, "-c", SAVE_UNDER_LIMIT, str(folder), str(step), str(limit)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=READY_TIMEOUT_S,
    )
    new = sorted({p.name for p in folder.iterdir()} - before)
    return save.returncode, (save.stdout + save.stderr).strip()[-300:], new


def disk_full_checkpoint(work: Path, seconds: float) -> FaultResult:
    model = copy_demo(work)
    status, error, new = save_on_full_disk(model)
    checks = Checks()
    checks.expect(status == 1 and "save failed" in error, "the save fails with an error", (status, error))
    checks.expect(not new, "no partial or temporary file is left", new)
    served = steady("disk_full_checkpoint", work, {"NANOCHAT_CHECKPOINT": str(model)}, seconds)
    served.checked = checks.checked + served.checked
    served.problems = checks.problems + served.problems
    served.held = not served.problems
    served.figures["save_error"] = error
    return served


def cpu_starvation(work: Path, seconds: float) -> FaultResult:
    service = Service(work, {})
    checks = Checks()
    hogs: list[subprocess.Popen] = []
    try:
        service.wait_ready()
        watch = Watch(service.url)
        watch.clients(2)
        time.sleep(seconds)
        started = watch.now()
        for _ in range(2 * (os.cpu_count() or 1)):
            hogs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(seconds)
        ended = watch.now()
        for hog in hogs:
            hog.kill()
            hog.wait()
        hogs.clear()
        time.sleep(seconds / 2)
        watch.clients(0)
        watch.close()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        service.stop()
    checks.all_succeed(watch)
    checks.stays_ready(watch)
    return result(
        "cpu_starvation",
        checks,
        watch,
        first_ok_after(watch, ended),
        hogs=2 * (os.cpu_count() or 1),
        p50_before_s=p50(watch.between(0, started)),
        p50_during_s=p50(watch.between(started, ended)),
        p50_after_s=p50(watch.between(ended)),
    )


def burst_10x(work: Path, seconds: float) -> FaultResult:
    service = Service(work, {"NANOCHAT_MAX_BATCH": "4", "NANOCHAT_MAX_QUEUE": "8"})
    checks = Checks()
    try:
        service.wait_ready()
        watch = Watch(service.url)
        watch.clients(2)
        time.sleep(seconds)
        started = watch.now()
        watch.clients(20)
        time.sleep(seconds)
        watch.clients(2)
        ended = watch.now()
        time.sleep(seconds)
        watch.clients(0)
        watch.close()
    finally:
        service.stop()
    statuses = counts(watch.outcomes)
    rejected = [o for o in watch.outcomes if o.status == "429"]
    checks.expect(set(statuses) <= {"200", "429"}, "every answer is 200 or 429, never a 5xx", statuses)
    checks.expect(all(o.retry_after for o in rejected), "every 429 has Retry-After", len(rejected))
    checks.stays_ready(watch)
    recovery = first_ok_after(watch, ended)
    late = watch.between(ended + seconds / 2)
    checks.expect(
        late and all(o.status == "200" for o in late), "after the burst every request succeeds", counts(late)
    )
    return result(
        "burst_10x",
        checks,
        watch,
        recovery,
        clients="2 -> 20 -> 2",
        during=counts(watch.between(started, ended)),
        p50_before_s=p50(watch.between(0, started)),
        p50_during_s=p50(watch.between(started, ended)),
    )


FAULTS: dict[str, Callable[[Path, float], FaultResult]] = {
    "corrupt_checkpoint": corrupt_checkpoint,
    "worker_sigkill": worker_sigkill,
    "otlp_down": otlp_down,
    "disk_full_logs": disk_full_logs,
    "disk_full_checkpoint": disk_full_checkpoint,
    "cpu_starvation": cpu_starvation,
    "burst_10x": burst_10x,
}


def run(faults: list[str], seconds: float = 8.0, work: Path | None = None) -> dict:
    """Run the faults one after the other; the report as a dict."""
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise ChaosError(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    if not GUNICORN.exists():
        raise ChaosError(f"gunicorn is not installed beside {sys.executable}")
    results = []
    base = work or Path(tempfile.mkdtemp(prefix="chaos-"))
    for name in faults:
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            outcome = FAULTS[name](folder, seconds)
        except ChaosError as e:  # the service never got going: a fault that did not hold, with the reason
            checks = Checks()
            checks.expect(False, "the harness could set the fault up and start the service", e)
            outcome = result(name, checks, None, None)
        outcome.duration_s = round(time.monotonic() - t0, 1)
        results.append(asdict(outcome))
        print(
            f"chaos: {name}: {'held' if outcome.held else 'DID NOT HOLD'} ({outcome.duration_s} s)",
            flush=True,
        )
    return {
        "seconds": seconds,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "held": all(r["held"] for r in results),
        "faults": results,
    }


def markdown(report: dict) -> str:
    lines = [
        "# Chaos report (`make chaos`, bench/chaos.py)",
        "",
        f"Phase length {report['seconds']} s; {report['cpus']} CPUs, load average {report['load_average']} "
        "at the start. Requests: short greedy chat completions (8 tokens) from 2 client threads.",
        "",
        "| fault | held | requests (status: count) | /ready transitions (s: state) | recovery s | figures |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["faults"]:
        requests = ", ".join(f"{k}: {v}" for k, v in r["requests"].items()) or "–"
        transitions = ", ".join(f"{t}: {c}" for t, c in r["ready_transitions"]) or "–"
        recovery = "–" if r["recovery_s"] is None else r["recovery_s"]
        figures = ", ".join(f"{k} {v}" for k, v in r["figures"].items() if k != "save_error") or "–"
        lines.append(
            f"| `{r['name']}` | {'yes' if r['held'] else '**no**'} | {requests} | {transitions} | {recovery} "
            f"| {figures} |"
        )
    lines += [
        "",
        "Recovery: `worker_sigkill`, from the kill to the new worker serving (its model loaded); "
        "`cpu_starvation` and `burst_10x`, from the fault's end to the first request started after it that "
        "succeeded.",
        "",
        "## What each fault checked",
        "",
    ]
    for r in report["faults"]:
        lines.append(f"- `{r['name']}`: " + "; ".join(r["checked"]) + ".")
        if r["figures"].get("save_error"):
            lines.append(f"  - the save's error: `{r['figures']['save_error']}`")
        lines += [f"  - **did not hold**: {p}" for p in r["problems"]]
    lines.append("")
    return "\n".join(lines)


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "chaos.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated (default: all)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load phase (default 8)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    try:
        report = run([f.strip() for f in args.faults.split(",") if f.strip()], args.seconds)
    except ChaosError as e:
        print(f"chaos: {e}", file=sys.stderr)
        return 2
    write(report, args.out)
    print(f"chaos: report -> {args.out / 'chaos.md'}")
    return 0 if report["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
