"""A bounded soak: gunicorn with its production config, mixed traffic at a fixed concurrency, one JSON report.

`python -m bench.soak --minutes 5` (`make soak`, SOAK_MINUTES=5) starts `gunicorn -c app/gunicorn.conf.py`
with 2 workers on a free 127.0.0.1 port (the demo model, its own temporary folder, no `.env`), waits until
it is ready, and keeps 8 clients busy with a fixed mix: streamed and non-streamed chat completions,
`/v1/classify`, `/health`, `/ready` and `/metrics`. Then it stops gunicorn with SIGTERM and prints:

- `requests`: sent, answered (a whole response: the JSON body parsed, or the stream through `data: [DONE]`)
  and failed (by error), and whether every request was answered exactly once: the response carries the
  request's own `X-Request-ID` and, for the logged routes, the server wrote exactly one access line for it;
- `statuses` per kind, latency p50/p99 per kind;
- gunicorn's workers (and master): RSS and open file descriptors at the start, the middle and the end;
- the server's log: lines, ERROR/CRITICAL lines, and gunicorn's exit status after SIGTERM.

It is a measurement, not a test, and not part of CI: it fails (exit 1) only when the server cannot be
started or a request was lost or answered twice. Bounded: it sends only to 127.0.0.1, stops after
`--minutes` or `--max-requests`, whichever comes first, and always stops gunicorn (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
GUNICORN_CONF = REPO_ROOT / "app" / "gunicorn.conf.py"
DEMO_MODEL = REPO_ROOT / "models" / "demo"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 180
READY_IN_A_ROW = 20  # /ready answers 200 on this many fresh connections in a row: both workers serve
REQUEST_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
REQUEST_ID_HEADER = "X-Request-ID"

# kind -> weight: about half the requests are chats, as in the traffic the service is sized for
MIX = {
    "chat_stream": 30,
    "chat": 20,
    "classify": 15,
    "health": 15,
    "ready": 10,
    "metrics": 10,
}
LOGGED_KINDS = ("chat_stream", "chat", "classify")  # the probes' access lines are at debug level
PROMPTS = (
    "What is your robot body",
    "Tell me a story about a lighthouse.",
    "How do I bake bread?",
    "What is the capital of France?",
    "Explain what a compiler does.",
)
TEXTS = (
    "The program crashed again after the last kernel update.",
    "The senate voted on the new budget late last night.",
    "The experiment measured the speed of light in water.",
    "My manager scheduled another meeting about meetings.",
)


class SoakError(Exception):
    """The soak could not run (no gunicorn, the server did not start), with the server's last log lines."""


# ---- the server -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env(port: int, workers: int, checkpoint: Path) -> dict[str, str]:
    """This process's environment without NANOCHAT_*, HOST and PORT, plus the soak's settings."""
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith("NANOCHAT_") and k not in ("HOST", "PORT")
    }
    return {
        **inherited,
        "HOST": HOST,
        "PORT": str(port),
        "NANOCHAT_WORKERS": str(workers),
        "NANOCHAT_CHECKPOINT": str(checkpoint),
        "NANOCHAT_THREADS": "1",  # two workers on a small machine: one torch thread each
        "NANOCHAT_METRICS_PORT": "0",  # /metrics on the app's port, as locally
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def gunicorn_command() -> list[str]:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.is_file():
        raise SoakError(f"no gunicorn beside {sys.executable} (make setup installs it)")
    return [str(gunicorn), "-c", str(GUNICORN_CONF)]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (gunicorn's workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name, in parentheses, may hold spaces: the parent pid is the 2nd field after it
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def process_sample(pid: int) -> dict[str, float | int | None]:
    """RSS (MB) and open file descriptors of one process; None for a process that is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return {"pid": pid, "rss_mb": None, "fds": None}
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"pid": pid, "rss_mb": round(rss_kb / 1024, 1), "fds": fds}


def sample(master: int) -> dict:
    return {
        "at_s": None,  # set by the caller
        "master": process_sample(master),
        "workers": [process_sample(pid) for pid in children(master)],
    }


def tail(log_path: Path, lines: int = 20) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    """Until /ready is 200 and the classifier (which loads after /ready) has loaded, on READY_IN_A_ROW fresh
    connections in a row (the kernel hands new connections to either worker, so both serve)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    in_a_row = 0
    while in_a_row < READY_IN_A_ROW:
        if process.poll() is not None:
            raise SoakError(f"gunicorn exited ({process.returncode}) while starting:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            raise SoakError(f"gunicorn was not ready after {READY_TIMEOUT_S} s:\n{tail(log_path)}")
        try:
            ready = httpx.get(f"{url}/ready", timeout=5).status_code == 200
            classifier = httpx.get(f"{url}/stats", timeout=5).json()["parts"]["classifier"]["state"]
            ready = ready and classifier != "loading"
        except httpx.TransportError:
            ready = False
        in_a_row = in_a_row + 1 if ready else 0
        if not ready:
            time.sleep(0.2)


@contextlib.contextmanager
def gunicorn(workers: int, checkpoint: Path, workdir: Path) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """gunicorn on a free port, ready; stopped with SIGTERM (then SIGKILL) however the block ends."""
    port = free_port()
    log_path = workdir / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            gunicorn_command(),
            cwd=workdir,  # no .env from the repository
            env=server_env(port, workers, checkpoint),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches the soak, which stops gunicorn itself
        )
    try:
        url = f"http://{HOST}:{port}"
        wait_ready(url, process, log_path)
        yield url, process, log_path
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# ---- the traffic ------------------------------------------------------------------------------------------
@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    failed: Counter = field(default_factory=Counter)  # "kind: error" -> count
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    answers: Counter = field(default_factory=Counter)  # request id -> responses that carried it
    logged_ids: set[str] = field(default_factory=set)  # ids of requests to the access-logged routes
    wrong_ids: int = 0  # responses carrying another request's id


def request_for(kind: str, rng: random.Random, max_tokens: int) -> tuple[str, str, dict | None]:
    """(method, path, JSON body) of one request of `kind`."""
    if kind in ("chat", "chat_stream"):
        body = {
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": rng.randint(1, max_tokens),
            "temperature": rng.choice([0.0, 0.8]),
            "stream": kind == "chat_stream",
        }
        return "POST", "/v1/chat/completions", body
    if kind == "classify":
        return "POST", "/v1/classify", {"input": rng.sample(TEXTS, rng.randint(1, len(TEXTS)))}
    return "GET", {"health": "/health", "ready": "/ready", "metrics": "/metrics"}[kind], None


async def one_request(
    client: httpx.AsyncClient, kind: str, request_id: str, method: str, path: str, body: dict | None
) -> int:
    """Send one request and read its whole answer; the status, or an exception for an incomplete one."""
    headers = {REQUEST_ID_HEADER: request_id}
    async with client.stream(method, path, json=body, headers=headers) as response:
        if response.headers.get(REQUEST_ID_HEADER) != request_id:
            raise WrongRequestId(response.headers.get(REQUEST_ID_HEADER))
        if kind == "chat_stream" and response.status_code == 200:
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
            if not lines or lines[-1] != "data: [DONE]":
                raise IncompleteAnswer("the stream ended without data: [DONE]")
            if any("error" in json.loads(line[6:]) for line in lines[:-1]):
                raise IncompleteAnswer("an error event in the stream")
        else:
            content = await response.aread()
            if response.headers.get("content-type", "").startswith("application/json"):
                json.loads(content)
        return response.status_code


class WrongRequestId(Exception):
    """The response carries another request's id (or none)."""


class IncompleteAnswer(Exception):
    """The response started but did not end as its protocol says."""


async def traffic(
    url: str, master: int, seconds: float, concurrency: int, max_requests: int, max_tokens: int, seed: int
) -> tuple[Tally, list[dict]]:
    """`concurrency` clients, each sending one request at a time, until `seconds` or `max_requests`."""
    tally = Tally()
    kinds, weights = zip(*MIX.items(), strict=True)
    started = time.monotonic()
    samples: list[dict] = []

    def take_sample() -> None:
        taken = sample(master)
        taken["at_s"] = round(time.monotonic() - started, 1)
        samples.append(taken)

    async def client_loop(number: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1000 + number)
        while time.monotonic() - started < seconds and tally.sent < max_requests:
            kind = rng.choices(kinds, weights)[0]
            method, path, body = request_for(kind, rng, max_tokens)
            request_id = f"soak-{tally.sent:07d}"
            tally.sent += 1
            if kind in LOGGED_KINDS:
                tally.logged_ids.add(request_id)
            began = time.monotonic()
            try:
                status = await one_request(client, kind, request_id, method, path, body)
            except WrongRequestId:
                tally.wrong_ids += 1
                tally.failed[f"{kind}: WrongRequestId"] += 1
                continue
            except (httpx.HTTPError, IncompleteAnswer, ValueError) as e:
                tally.failed[f"{kind}: {type(e).__name__}"] += 1
                continue
            tally.answered += 1
            tally.answers[request_id] += 1
            tally.statuses[kind][str(status)] += 1
            tally.latencies[kind].append(time.monotonic() - began)

    async def middle() -> None:
        await asyncio.sleep(seconds / 2)
        take_sample()

    take_sample()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        sampler = asyncio.create_task(middle())
        await asyncio.gather(*(client_loop(i, client) for i in range(concurrency)))
        sampler.cancel()  # when --max-requests ended the traffic before its middle
    take_sample()
    return tally, samples


# ---- the report -------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def read_log(log_path: Path) -> tuple[int, int, Counter]:
    """(lines, ERROR/CRITICAL lines, request id -> access lines) of the server's JSON log."""
    lines = errors = 0
    access: Counter = Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        lines += 1
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("severity") in ("ERROR", "CRITICAL"):
            errors += 1
        if "httpRequest" in record and record.get("request_id"):
            access[record["request_id"]] += 1
    return lines, errors, access


def report(tally: Tally, samples: list[dict], log_path: Path, exit_status: int, args) -> dict:
    lines, error_lines, access = read_log(log_path)
    answered_once = all(count == 1 for count in tally.answers.values())
    logged_once = Counter(access.get(request_id, 0) for request_id in tally.logged_ids)
    first, last = samples[0], samples[-1]
    statuses = Counter()
    for counts in tally.statuses.values():
        statuses.update(counts)
    return {
        "settings": {
            "minutes": args.minutes,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "max_requests": args.max_requests,
            "max_tokens": args.max_tokens,
            "checkpoint": str(args.checkpoint),
            "mix": MIX,
        },
        "requests": {
            "sent": tally.sent,
            "answered": tally.answered,
            "failed": dict(tally.failed),
            "each_answered_exactly_once": tally.answered == tally.sent and answered_once,
            "responses_with_another_requests_id": tally.wrong_ids,
            # how many access lines the server wrote per chat/classify request: {"1": all of them}
            "access_lines_per_logged_request": {str(k): v for k, v in sorted(logged_once.items())},
        },
        "statuses": {
            "all": dict(sorted(statuses.items())),
            **{kind: dict(sorted(counts.items())) for kind, counts in sorted(tally.statuses.items())},
        },
        "latency_ms": {
            kind: {
                "p50": round(1000 * percentile(values, 0.5), 1),
                "p99": round(1000 * percentile(values, 0.99), 1),
            }
            for kind, values in sorted(tally.latencies.items())
        },
        "processes": {"start": first, "middle": samples[1] if len(samples) == 3 else None, "end": last},
        "workers_rss_mb_change": round(workers_rss_mb(last) - workers_rss_mb(first), 1),
        "server": {"log_lines": lines, "error_lines": error_lines, "exit_status_after_sigterm": exit_status},
    }


def workers_rss_mb(taken: dict) -> float:
    return sum(worker["rss_mb"] or 0 for worker in taken["workers"])


def soak_ok(result: dict) -> bool:
    requests = result["requests"]
    return requests["each_answered_exactly_once"] and set(requests["access_lines_per_logged_request"]) <= {
        "1"
    }


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="nanochat-soak-") as tmp:
        with gunicorn(args.workers, args.checkpoint, Path(tmp)) as (url, process, log_path):
            tally, samples = asyncio.run(
                traffic(
                    url,
                    process.pid,
                    args.minutes * 60,
                    args.concurrency,
                    args.max_requests,
                    args.max_tokens,
                    args.seed,
                )
            )
        if args.log:
            shutil.copyfile(log_path, args.log)
        return report(tally, samples, log_path, process.returncode, args)


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--minutes", type=positive(float), default=5.0, help="how long (default 5)")
    parser.add_argument("--concurrency", type=positive(int), default=8, help="clients (default 8)")
    parser.add_argument("--workers", type=positive(int), default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--max-requests", type=positive(int), default=500_000, help="a bound on the count")
    parser.add_argument("--max-tokens", type=positive(int), default=16, help="largest max_tokens of a chat")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_MODEL, help="default: models/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--log", type=Path, help="keep gunicorn's log in this file")
    args = parser.parse_args(argv)
    args.checkpoint = args.checkpoint.resolve()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so that gunicorn is stopped too
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = run(args)
    except SoakError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if not soak_ok(result):
        print("soak: a request was lost or answered more than once (see requests)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
