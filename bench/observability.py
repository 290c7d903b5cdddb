"""What observability costs: the same streaming load against the service with metrics, logs and traces on,
and with them off, in one run. `make bench-observability`, or

    python -m bench.observability --checkpoint models/demo --concurrency 8 --repeats 10 --json

It starts two `python -m app` servers on the same checkpoint:
- "on": the defaults (Prometheus metrics, one JSON access line per request, written to a file), traces
  exported over OTLP/HTTP to a collector stand-in this process runs (it accepts and drops them), and
  /metrics scraped every `--scrape-interval` seconds, as Prometheus would;
- "off": NANOCHAT_METRICS=false, NANOCHAT_ACCESS_LOG=false, OTEL_SDK_DISABLED=true.

Then, `--repeats` times, it runs one round of streaming chat completions (bench/serve.py: greedy,
`ignore_eos`, `--max-tokens` each, `--concurrency` at a time) against each server, alternating which goes
first, while the other idles. It prints aggregate output tokens/s per round, their medians, and on ÷ off:
the median over repeats of the ratio of the two back-to-back rounds (robust to other load on the machine).
The target is a cost of at most 5% (`ratio_on_vs_off` >= 0.95). It also reports each server's CPU time per
output token (from /proc): on a machine shared with other work, the steadier figure of the two.

A measurement, not a test: it fails only when a server cannot be started or used (one line on stderr, exit
1). The client and the collector stand-in share the machine with the servers, as in bench_serve.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from bench.serve import BenchError, describe_server, run_level, wait_ready
from nanochat.cliargs import OneLineParser, UsageError, positive_int

TARGET_COST_PERCENT = 5.0
REPO_ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 20
OFF = {"NANOCHAT_METRICS": "false", "NANOCHAT_ACCESS_LOG": "false", "OTEL_SDK_DISABLED": "true"}


# ---- the collector stand-in --------------------------------------------------------------------------
@contextmanager
def collector() -> Iterator[tuple[str, dict[str, int]]]:
    """An OTLP/HTTP endpoint on 127.0.0.1 that accepts every export and drops it; yields its base URL and
    what it has received (requests, bytes)."""
    received = {"requests": 0, "bytes": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # answer an empty ExportTraceServiceResponse
            size = int(self.headers.get("Content-Length", 0))
            self.rfile.read(size)
            received["requests"] += 1
            received["bytes"] += size
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="otlp-collector", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


# ---- the servers ------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log: Path
    rounds: list[float] = field(default_factory=list)  # output tokens/s of each round
    cpu_ms_per_token: list[float] = field(default_factory=list)  # the server's CPU time per output token

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(name: str, env: dict[str, str], checkpoint: str, folder: Path) -> Server:
    """`python -m app` on a free port, in its own folder (no .env), with only `env` beyond this process's."""
    port = _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("NANOCHAT_", "OTEL_"))}
    full_env = {**inherited, "PYTHONPATH": str(REPO_ROOT), "NANOCHAT_CHECKPOINT": checkpoint, **env}
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(name, f"http://127.0.0.1:{port}", process, log)


async def _scrape(url: str, interval_s: float, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            await client.get(f"{url}/metrics")
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


async def measure(servers: list[Server], args: argparse.Namespace) -> None:
    """Warm both up, then alternate rounds between them; tokens/s of each round in `server.rounds`."""
    limits = httpx.Limits(max_connections=args.concurrency + 4, max_keepalive_connections=None)
    clients = {s.name: httpx.AsyncClient(base_url=s.url, limits=limits, timeout=300) for s in servers}
    try:
        infos = {}
        for server in servers:
            client = clients[server.name]
            try:
                await wait_ready(client, args.wait_ready)
            except BenchError:
                tail = server.log.read_text(errors="replace")[-2000:]
                raise BenchError(f"the {server.name!r} server did not get ready:\n{tail}") from None
            infos[server.name] = await describe_server(client, None)
            for _ in range(2):  # warm-up: both servers have run requests before the first round
                await run_level(client, infos[server.name], args.concurrency, args.concurrency, 8)
        for repeat in range(args.repeats):
            order = servers if repeat % 2 == 0 else servers[::-1]
            for server in order:
                stop = asyncio.Event()
                scraper = None
                if server.name == "on" and args.scrape_interval > 0:
                    scraper = asyncio.create_task(_scrape(server.url, args.scrape_interval, stop))
                cpu = server.cpu_seconds()
                level = await run_level(
                    clients[server.name], infos[server.name], args.concurrency, args.requests, args.max_tokens
                )
                cpu = server.cpu_seconds() - cpu
                stop.set()
                if scraper is not None:
                    await scraper
                if level["errors"]:
                    raise BenchError(f"the {server.name!r} server failed requests: {level['error_samples']}")
                server.rounds.append(level["output_tokens_per_s"])
                server.cpu_ms_per_token.append(round(cpu * 1000 / max(level["output_tokens"], 1), 4))
    finally:
        for client in clients.values():
            await client.aclose()


def run_benchmark(args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench-observability-"))
    servers: list[Server] = []
    try:
        with collector() as (otlp_url, exported):
            on_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url, "OTEL_SERVICE_NAME": "nanochat-bench"}
            servers = [
                start_server("on", on_env, args.checkpoint, folder / "on"),
                start_server("off", OFF, args.checkpoint, folder / "off"),
            ]
            asyncio.run(measure(servers, args))
            access_lines = sum(
                1 for line in servers[0].log.read_text().splitlines() if '"app.access"' in line
            )
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    on, off = (statistics.median(s.rounds) for s in servers)
    # each repeat's two rounds ran back to back: their ratio cancels most of what else the machine did
    ratio = statistics.median(a / b for a, b in zip(servers[0].rounds, servers[1].rounds, strict=True))
    cpu_on, cpu_off = (statistics.median(s.cpu_ms_per_token) for s in servers)
    return {
        "checkpoint": args.checkpoint,
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "scrape_interval_s": args.scrape_interval,
        "on": {
            "output_tokens_per_s": servers[0].rounds,
            "median": round(on, 1),
            "cpu_ms_per_token": servers[0].cpu_ms_per_token,
            "cpu_median": cpu_on,
        },
        "off": {
            "output_tokens_per_s": servers[1].rounds,
            "median": round(off, 1),
            "cpu_ms_per_token": servers[1].cpu_ms_per_token,
            "cpu_median": cpu_off,
        },
        "ratio_on_vs_off": round(ratio, 3),
        "cost_percent": round((1 - ratio) * 100, 1),
        "cpu_cost_percent": round((cpu_on / cpu_off - 1) * 100, 1) if cpu_off else None,
        "target_cost_percent": TARGET_COST_PERCENT,
        "on_evidence": {
            "access_lines": access_lines,
            "otlp_exports": exported["requests"],
            "otlp_bytes": exported["bytes"],
        },
    }


def format_table(result: dict) -> str:
    on, off = result["on"], result["off"]
    return "\n".join(
        [
            f"observability on vs off: {result['concurrency']} streams x {result['max_tokens']} tokens, "
            f"{result['requests_per_round']} requests a round, {result['repeats']} rounds each",
            f"  on : median {on['median']:>8.1f} tok/s   rounds {on['output_tokens_per_s']}",
            f"  off: median {off['median']:>8.1f} tok/s   rounds {off['output_tokens_per_s']}",
            f"  on / off = {result['ratio_on_vs_off']:.3f}: cost {result['cost_percent']:.1f}% "
            f"(target <= {result['target_cost_percent']:g}%)",
            f"  server CPU per output token: on {on['cpu_median']:.3f} ms, off {off['cpu_median']:.3f} ms "
            f"({result['cpu_cost_percent']:+.1f}%)",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m bench.observability",
        description="Service tokens/s with metrics, logs and traces on vs off (two servers, one run).",
    )
    parser.add_argument("--checkpoint", default="models/demo", help="what both servers serve (default: demo)")
    parser.add_argument("--concurrency", type=positive_int, default=8, help="streams at a time (default 8)")
    parser.add_argument("--requests", type=positive_int, default=32, help="requests per round (default 32)")
    parser.add_argument("--max-tokens", type=positive_int, default=128, help="tokens per reply (default 128)")
    parser.add_argument("--repeats", type=positive_int, default=10, help="rounds per server (default 10)")
    parser.add_argument(
        "--scrape-interval", type=float, default=1.0, metavar="S", help="scrape 'on' every S s (0: never)"
    )
    parser.add_argument("--wait-ready", type=float, default=120.0, metavar="S", help="wait for /ready (120)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if not Path(args.checkpoint).is_dir():
            raise UsageError(f"--checkpoint {args.checkpoint}: no such folder")
        args.checkpoint = str(Path(args.checkpoint).resolve())
        result = run_benchmark(args)
    except (UsageError, BenchError) as e:
        print(f"bench_observability: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
