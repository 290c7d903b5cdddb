"""Whether a flood of `POST /v1/classify` starves the rest of the service. Run

    python -m bench.admission --checkpoint models/demo --flooders 160 --seconds 15 --json

It starts one `python -m app` server (the demo model, the shipped classifier, default settings unless
`--env NAME=VALUE` says otherwise) and measures it twice, `--seconds` each: quiet, then flooded by
`--flooders` clients, each sending classify requests of `--texts` texts of `--chars` characters back to
back (the next as soon as one is answered, 429 or not: the worst case, clients that ignore Retry-After).
A separate process floods, so the probes here do not share its GIL. In both phases:

- `/health` every 20 ms on one kept-alive connection: p50, p99 and max latency (the goal: p99 <= 50 ms;
  the image's HEALTHCHECK gives up at 2 s);
- 8-token chat completions one after another (greedy, ignore_eos): median and p90 latency (the goal: the
  same as quiet);
- the server's resident memory (VmRSS, with its worker processes'): the most seen; and once more a few
  seconds after the flood.

It prints the figures, the flood's statuses and the ratios flooded / quiet (one JSON object with --json).
A measurement, not a test: it fails only when the server cannot be started or used (one line on stderr,
exit 1). The flooding client shares the machine with the server: on a small machine it takes CPU the server
would otherwise have, so the flooded figures are an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
HEALTH_INTERVAL_S = 0.02
SETTLE_S = 3.0  # after the flood, before the last memory reading
READY_TIMEOUT_S = 120
CHAT = {
    "messages": [{"role": "user", "content": "Hello!"}],
    "max_tokens": 8,
    "temperature": 0,
    "ignore_eos": True,
}
GOAL_HEALTH_P99_MS = 50.0


class BenchError(Exception):
    pass


def classify_body(texts: int, chars: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(5000)]

    def text() -> str:
        out: list[str] = []
        size = 0
        while size < chars:
            out.append(rng.choice(words))
            size += len(out[-1]) + 1
        return " ".join(out)[:chars]

    return json.dumps({"input": [text() for _ in range(texts)]}).encode()


# ---- the flood (its own process) --------------------------------------------------------------------
async def _flood(url: str, flooders: int, seconds: float, body: bytes) -> dict:
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=flooders, max_keepalive_connections=flooders)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def one() -> None:
            while time.monotonic() < deadline:
                try:
                    response = await client.post("/v1/classify", content=body, headers=headers)
                    statuses[str(response.status_code)] += 1
                except httpx.HTTPError as e:
                    statuses[type(e).__name__] += 1

        await asyncio.gather(*(one() for _ in range(flooders)))
    return {"statuses": dict(statuses), "answered": sum(statuses.values())}


def flood_main(url: str, flooders: int, seconds: float, texts: int, chars: int) -> None:
    result = asyncio.run(_flood(url, flooders, seconds, classify_body(texts, chars)))
    print(json.dumps(result))


# ---- the probes -------------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    """The resident memory of `pid` and its descendants (classification's worker processes), in MB."""
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except FileNotFoundError:
            if current == pid:
                raise BenchError(f"no process {pid}") from None
            continue  # a worker that ended meanwhile
        total += (
            next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
        )
        for task in tasks:
            with contextlib.suppress(FileNotFoundError):
                todo += [int(child) for child in (task / "children").read_text().split()]
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(url: str, pid: int, seconds: float) -> dict:
    """Probe /health, chat and memory for `seconds`, all at once (threads)."""
    health: list[float] = []
    chats: list[float] = []
    failures: Counter[str] = Counter()
    rss: list[float] = []
    stop = threading.Event()

    def probe_health() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get("/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    health.append(time.perf_counter() - started)
                else:
                    failures["health"] += 1
                stop.wait(HEALTH_INTERVAL_S)

    def probe_chat() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.post("/v1/chat/completions", json=CHAT).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    chats.append(time.perf_counter() - started)
                else:
                    failures["chat"] += 1

    def probe_memory() -> None:
        while not stop.is_set():
            rss.append(rss_mb(pid))
            stop.wait(0.5)

    threads = [threading.Thread(target=f, daemon=True) for f in (probe_health, probe_chat, probe_memory)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=150)
    if not health or not chats:
        raise BenchError(f"no successful probes in {seconds} s: {dict(failures)}")
    return {
        "health_p50_ms": round(1000 * statistics.median(health), 2),
        "health_p99_ms": round(1000 * percentile(health, 0.99), 2),
        "health_max_ms": round(1000 * max(health), 2),
        "health_probes": len(health),
        "chat_median_ms": round(1000 * statistics.median(chats), 2),
        "chat_p90_ms": round(1000 * percentile(chats, 0.9), 2),
        "chats": len(chats),
        "failures": dict(failures),
        "rss_mb_max": round(max(rss), 1),
    }


# ---- the server -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, env: dict[str, str], workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("NANOCHAT_", "HOST", "PORT"))}
    full_env = {
        **inherited,
        "NANOCHAT_CHECKPOINT": str(Path(checkpoint).resolve()),
        "PYTHONPATH": str(REPO_ROOT),
        **env,
    }
    with open(workdir / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the server exited ({process.returncode}); see {workdir / 'server.log'}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                # the classifier loads after /ready says 200: the measurement starts once it has
                classifier = httpx.get(f"{url}/stats", timeout=2).json()["parts"]["classifier"]
                if classifier["state"] != "loading":
                    return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise BenchError(f"the server was not ready after {READY_TIMEOUT_S} s")


def run(args: argparse.Namespace) -> dict:
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="bench-admission-") as tmp:
        process, url = start_server(args.checkpoint, env, Path(tmp))
        try:
            body = classify_body(args.texts, args.chars)
            headers = {"content-type": "application/json"}
            warm = httpx.post(f"{url}/v1/classify", content=body, headers=headers, timeout=60)  # full size
            if warm.status_code != 200:
                raise BenchError(f"classify answered {warm.status_code}: {warm.text[:300]}")
            quiet = measure(url, process.pid, args.seconds)
            rss_before = rss_mb(process.pid)
            flooder = subprocess.Popen(
                [sys.executable, "-m", "bench.admission", "--flood", url, "--flooders",
                 str(args.flooders), "--seconds", str(args.seconds + 2), "--texts", str(args.texts),
                 "--chars", str(args.chars)],
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                stdout=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(2)  # the flood under way
            flooded = measure(url, process.pid, args.seconds)
            out, _ = flooder.communicate(timeout=300)
            flood = json.loads(out)
            time.sleep(SETTLE_S)
            rss_after = rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)

    def ratio(a: float, b: float) -> float:
        return round(a / b, 2) if b else float("inf")

    return {
        "server": {"checkpoint": args.checkpoint, "env": env},
        "flood": {"flooders": args.flooders, "texts": args.texts, "chars": args.chars, **flood},
        "quiet": {**quiet, "rss_mb_end": round(rss_before, 1)},
        "flooded": flooded,
        "after": {"rss_mb": round(rss_after, 1), "settle_s": SETTLE_S},
        "ratios": {
            "health_p99_flooded_over_quiet": ratio(flooded["health_p99_ms"], quiet["health_p99_ms"]),
            "chat_median_flooded_over_quiet": ratio(flooded["chat_median_ms"], quiet["chat_median_ms"]),
            "rss_peak_flooded_over_quiet": ratio(flooded["rss_mb_max"], rss_before),
            "rss_after_over_before": ratio(rss_after, rss_before),
        },
        "goal_health_p99_ms": GOAL_HEALTH_P99_MS,
        "health_p99_within_goal": flooded["health_p99_ms"] <= GOAL_HEALTH_P99_MS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(REPO_ROOT / "models" / "demo"))
    parser.add_argument("--flooders", type=int, default=160, help="concurrent classify clients")
    parser.add_argument("--texts", type=int, default=64, help="texts per classify request")
    parser.add_argument("--chars", type=int, default=10_000, help="characters per text")
    parser.add_argument("--seconds", type=float, default=15.0, help="each phase's length")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--flood", metavar="URL", help=argparse.SUPPRESS)  # the flooding process
    args = parser.parse_args(argv)
    if args.flood:
        flood_main(args.flood, args.flooders, args.seconds, args.texts, args.chars)
        return 0
    try:
        result = run(args)
    except (BenchError, OSError, httpx.HTTPError, subprocess.SubprocessError) as e:
        print(f"bench_admission: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
