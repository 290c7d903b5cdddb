"""Serving benchmark: what a client of a running server sees, next to what the bare engine can do.

`python -m bench.serve --url http://127.0.0.1:8000 --checkpoint models/demo --json`

For each concurrency level, that many clients stream `POST /v1/chat/completions` back to back (greedy, a
fixed `max_tokens`) until the level's requests are done. Figures per level: aggregate output tokens/s,
time to first token (TTFT) p50/p95, time per output token after the first (TPOT) p50/p95, end-to-end
latency p50/p95, and the error count; and the server's resident memory idle (after the warm-up request)
and after each level: with `--server-pid` (a server on this machine) its VmRSS and peak VmHWM from
/proc/PID/status, else the `nanochat_process_resident_memory_bytes` gauge from its /metrics (sampled by the
server every few seconds, so up to that stale; no peak). With `--checkpoint`, the same run also loads that
checkpoint in this process and times the engine's batch-1 decode (`nanochat.bench.run_benchmark`), with
the server idle, so the service's overhead shows as one ratio. docs/serving.md explains each figure.

This is a measurement, not a test: it never fails on a slow figure, only on a server it cannot use (one
line on stderr, exit 1). Targets are reported beside the ratios. It does not start the server, and on a
shared machine the client's own CPU use is part of what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from nanochat.cliargs import OneLineParser, UsageError, non_negative_int, positive_int
from nanochat.device import DTYPE_CHOICES

TARGET_16_VS_1_STREAMS = 5.0  # aggregate tokens/s with 16 concurrent streams vs 1
TARGET_SERVICE_VS_ENGINE = 0.9  # one stream through the service vs the engine serving the same requests
ENGINE_PROMPT_TOKENS = 32  # about the length of the chat prompts below once rendered
ENGINE_REPEATS = 5  # best of: one decode run of a small model is short, so a busy machine shows in it
MAX_ERROR_SAMPLES = 5
RSS_METRIC = "nanochat_process_resident_memory_bytes"  # app/observability/catalog.py PROCESS_MEMORY
TARGET_JSON_VS_FREE = 0.85  # tokens/s with --json-share of the requests constrained vs none
# --json-share's requests: structured outputs, a list of at least 32 items, so that a constrained reply
# runs to max_tokens (cut: "length") as a free one does with ignore_eos: tokens/s compare like with like
JSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "inventory",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "minItems": 32,
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "maxLength": 24},
                            "count": {"type": "integer", "minimum": 0},
                            "kind": {"enum": ["tool", "food", "book", "other"]},
                        },
                        "required": ["name", "count", "kind"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["items"],
            "additionalProperties": False,
        },
    },
}

# Open-ended requests, so a model that stops at end-of-turn still writes long answers.
PROMPTS = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a compiler turns source code into a running program.",
    "Describe a walk through a busy city market, sight by sight and sound by sound.",
    "List everything you would pack for a month-long trip and explain each choice.",
    "Write a long letter to a friend about the best book you have ever read.",
    "Explain step by step how to bake bread, from the flour to the first slice.",
)


class BenchError(Exception):
    """The server cannot be benchmarked (unreachable, not ready, no model); one line for the user."""


@dataclass
class StreamResult:
    """One request as the client saw it (times in seconds from sending the request)."""

    tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float = 0.0
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if self.error or self.ttft_s is None or self.tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.tokens - 1)


@dataclass(frozen=True)
class ServerInfo:
    model: str
    ignore_eos: bool  # the request schema has `ignore_eos`: every request decodes exactly max_tokens
    stream_usage: bool  # it has `stream_options`: token counts come from the final usage chunk


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# ---- the server ----------------------------------------------------------------------------------------
async def wait_ready(client: httpx.AsyncClient, timeout_s: float) -> None:
    """Poll GET /ready until it answers 200, or raise BenchError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            response = await client.get("/ready")
            if response.status_code == 200:
                return
            last = f"/ready answered {response.status_code}"
        except httpx.TransportError as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise BenchError(f"server at {client.base_url} is not ready after {timeout_s:g} s ({last})")
        await asyncio.sleep(0.5)


async def describe_server(client: httpx.AsyncClient, model: str | None) -> ServerInfo:
    """The model id to ask for, and which request extensions the server's OpenAPI schema offers."""
    if model is None:
        response = await client.get("/v1/models")
        if response.status_code != 200:
            raise BenchError(f"GET /v1/models answered {response.status_code}: {response.text[:200]}")
        try:
            model = response.json()["data"][0]["id"]
        except (ValueError, LookupError, TypeError):
            raise BenchError(f"GET /v1/models names no model ({response.text[:200]}); pass --model") from None
    fields: set[str] = set()
    response = await client.get("/openapi.json")
    if response.status_code == 200:
        fields = chat_request_fields(response.json())
    return ServerInfo(model, "ignore_eos" in fields, "stream_options" in fields)


def chat_request_fields(openapi: dict) -> set[str]:
    """Property names of the POST /v1/chat/completions JSON body in an OpenAPI document."""
    try:
        operation = openapi["paths"]["/v1/chat/completions"]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
    except (KeyError, TypeError):
        return set()
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = openapi.get("components", {}).get("schemas", {}).get(name, {})
    return set(schema.get("properties", {}))


def chat_request(info: ServerInfo, prompt: str, max_tokens: int, constrained: bool = False) -> dict:
    """A streaming greedy request; `constrained`: its reply JSON valid against JSON_FORMAT's schema."""
    body: dict = {
        "model": info.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    if info.ignore_eos:
        body["ignore_eos"] = True
    if info.stream_usage:
        body["stream_options"] = {"include_usage": True}
    if constrained:
        body["response_format"] = JSON_FORMAT
    return body


async def stream_chat(client: httpx.AsyncClient, body: dict, count_by_usage: bool = True) -> StreamResult:
    """Send one streaming chat completion and time it; failures are recorded, never raised.

    The client shares the machine with the server, so it does as little per token as it can: it splits the
    raw bytes into events and parses JSON only until the first content token (TTFT), for events that may
    carry `usage` or an `error`, and for every event when tokens must be counted as content chunks
    (`count_by_usage` False).
    """
    result = StreamResult()
    chunks = 0  # content deltas: one per token on a server that streams every token
    usage_tokens = None
    done = False
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                result.error = f"HTTP {response.status_code}: {_error_message(response)}"
                return result
            events = SseSplitter()
            async for block in response.aiter_raw():
                for data in events.feed(block):
                    if data == b"[DONE]":
                        done = True
                        break
                    parse = result.ttft_s is None or not count_by_usage or b'"usage"' in data
                    if not parse and b'"error"' not in data:
                        continue
                    event = json.loads(data)
                    if "error" in event:
                        result.error = f"stream error: {event['error'].get('message', event['error'])}"
                        return result
                    if event.get("usage"):
                        usage_tokens = event["usage"].get("completion_tokens")
                    for choice in event.get("choices", ()):
                        if choice.get("delta", {}).get("content"):
                            chunks += 1
                            if result.ttft_s is None:
                                result.ttft_s = time.perf_counter() - start
                if done:
                    break
            if not done:
                result.error = "the stream ended without data: [DONE]"
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        result.error = f"{type(e).__name__}: {e}"
    finally:
        result.e2e_s = time.perf_counter() - start
    result.tokens = usage_tokens if usage_tokens is not None else chunks
    return result


class SseSplitter:
    """Cut a Server-Sent Events byte stream, arriving in blocks of any size, into `data:` payloads (bytes,
    one per `data:` line; comments and other fields are skipped). Nothing is decoded."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, block: bytes) -> list[bytes]:
        *events, self._pending = (self._pending + block).replace(b"\r\n", b"\n").split(b"\n\n")
        return [
            line[5:].strip() for event in events for line in event.split(b"\n") if line.startswith(b"data:")
        ]


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def process_memory(pid: int) -> dict[str, int | None] | None:
    """Resident memory of process `pid` now (VmRSS) and at its peak so far (VmHWM), in bytes, from
    /proc/PID/status; None where it cannot be read (no such process, not Linux)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    try:
        return {
            "rss_bytes": int(fields["VmRSS"].split()[0]) * 1024,  # the kernel writes "<n> kB"
            "peak_rss_bytes": int(fields["VmHWM"].split()[0]) * 1024,
        }
    except (KeyError, ValueError, IndexError):
        return None


async def scraped_memory(client: httpx.AsyncClient) -> dict[str, int | None] | None:
    """The server's own resident-memory gauge from GET /metrics; None where /metrics does not offer it."""
    try:
        response = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    for line in response.text.splitlines():
        name, _, value = line.partition(" ")
        if name.split("{", 1)[0] == RSS_METRIC:
            try:
                return {"rss_bytes": int(float(value.split()[0])), "peak_rss_bytes": None}
            except (ValueError, IndexError):
                return None
    return None


async def server_memory(client: httpx.AsyncClient, pid: int | None) -> dict[str, int | None] | None:
    return process_memory(pid) if pid is not None else await scraped_memory(client)


def constrained_request(i: int, share: float) -> bool:
    """Whether request i is one of the `share` constrained (spread evenly: 0.5 is every other one)."""
    return int((i + 1) * share) > int(i * share)


async def run_level(
    client: httpx.AsyncClient,
    info: ServerInfo,
    concurrency: int,
    requests: int,
    max_tokens: int,
    json_share: float = 0.0,
) -> dict:
    """`concurrency` clients send `requests` streaming requests in all, each client one at a time;
    `json_share` of them with a JSON schema's response_format."""
    pending = iter(range(requests))
    results: list[StreamResult] = []

    async def client_loop() -> None:
        for i in pending:
            constrained = constrained_request(i, json_share)
            body = chat_request(info, PROMPTS[i % len(PROMPTS)], max_tokens, constrained)
            results.append(await stream_chat(client, body, info.stream_usage))

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall_s = time.perf_counter() - start

    done = [r for r in results if r.error is None]
    ttft = [r.ttft_s for r in done if r.ttft_s is not None]
    tpot = [t for r in done if (t := r.tpot_s) is not None]
    e2e = [r.e2e_s for r in done]
    tokens = sum(r.tokens for r in done)
    errors = [r.error for r in results if r.error is not None]
    return {
        "concurrency": concurrency,
        "json_share": json_share,
        "requests": len(results),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:MAX_ERROR_SAMPLES],
        "output_tokens": tokens,
        "mean_output_tokens": round(tokens / len(done), 1) if done else 0,
        "wall_s": round(wall_s, 3),
        "output_tokens_per_s": round(tokens / wall_s, 1),
        "ttft_ms": {"p50": _ms(percentile(ttft, 50)), "p95": _ms(percentile(ttft, 95))},
        "tpot_ms": {"p50": _ms(percentile(tpot, 50)), "p95": _ms(percentile(tpot, 95))},
        "e2e_ms": {"p50": _ms(percentile(e2e, 50)), "p95": _ms(percentile(e2e, 95))},
    }


# ---- the engine ----------------------------------------------------------------------------------------
def engine_batch1(args: argparse.Namespace) -> dict:
    """The bare engine on `args.checkpoint`, measured in this process, one request at a time.

    Two figures: `decode_batch1_tokens_per_s` (decode steps only, best of ENGINE_REPEATS, as `nanochat
    bench`), and `request_tokens_per_s`: the very work the one-stream level asks of the server, measured
    the same way, so the two compare like for like: the same requests (PROMPTS in turn, rendered as a
    chat, prefilled, then `max_tokens` generated greedily) one after another, all tokens over all the
    wall time.
    """
    import torch

    from nanochat.bench import run_benchmark
    from nanochat.checkpoint import CheckpointError
    from nanochat.cliargs import load_from_args

    try:
        loaded = load_from_args(args)
    except CheckpointError as e:
        raise BenchError(str(e)) from e
    result = run_benchmark(
        loaded.model,
        loaded.tokenizer,
        batches=(),
        prompt_len=ENGINE_PROMPT_TOKENS,
        decode_steps=args.max_tokens,
        repeats=ENGINE_REPEATS,
        with_hf=False,
    )
    return {
        "checkpoint": args.checkpoint,
        "device": str(next(loaded.model.parameters()).device),
        "dtype": result["model"]["dtype"],
        "threads": torch.get_num_threads(),
        "decode_steps": result["decode_steps"],
        "decode_batch1_tokens_per_s": result["decode_batch1_tokens_per_s"],
        "request_tokens_per_s": _engine_request_rate(loaded, args.max_tokens, one_stream_requests(args)),
    }


def one_stream_requests(args: argparse.Namespace) -> int:
    """How many requests the one-stream level sends."""
    return max(args.requests_per_level or 16, 1)


def _engine_request_rate(loaded, max_tokens: int, requests: int) -> float:
    """Tokens/s of the engine serving the benchmark's chat requests alone (prefill included)."""
    from nanochat.engine import Engine

    tokenizer = loaded.tokenizer
    engine = Engine(loaded.model, tokenizer, max_batch=1)
    assistant = tokenizer.encode_special("<|assistant_start|>")
    prompts = []
    for text in PROMPTS:
        ids, _ = tokenizer.render_conversation({"messages": [{"role": "user", "content": text}]})
        prompts.append([*ids, assistant])

    def one_request(prompt: list[int]) -> float:
        start = time.perf_counter()
        for _ in engine.generate(prompt, max_tokens=max_tokens, temperature=0.0, ignore_eos=True):
            pass
        return time.perf_counter() - start

    one_request(prompts[0])  # warm-up, as the server's warm-up request
    seconds = sum(one_request(prompts[i % len(prompts)]) for i in range(requests))
    return round(requests * max_tokens / seconds, 1)


# ---- the run -------------------------------------------------------------------------------------------
async def run_serve_benchmark(args: argparse.Namespace) -> dict:
    """Every figure as a JSON-able dict (see the module docstring)."""
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4, max_keepalive_connections=None)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=timeout) as client:
        try:
            await wait_ready(client, args.wait_ready)
            info = await describe_server(client, args.model)
        except httpx.HTTPError as e:
            raise BenchError(f"cannot use the server at {args.url}: {type(e).__name__}: {e}") from e
        # the engine first, while the server is idle, so the two never compete for the same cores
        engine = engine_batch1(args) if args.checkpoint else {"skipped": "no --checkpoint given"}
        warmup = await stream_chat(client, chat_request(info, PROMPTS[0], min(args.max_tokens, 8)))
        if warmup.error:
            raise BenchError(f"the warm-up request failed: {warmup.error}")
        pid = args.server_pid
        memory: dict = {
            "source": f"/proc/{pid}/status" if pid is not None else f"/metrics {RSS_METRIC}",
            "idle": await server_memory(client, pid),
            "after_level": {},
        }
        levels, json_levels = {}, {}
        for concurrency in args.concurrency:
            requests = max(args.requests_per_level or max(4 * concurrency, 16), concurrency)
            levels[str(concurrency)] = await run_level(client, info, concurrency, requests, args.max_tokens)
            memory["after_level"][str(concurrency)] = await server_memory(client, pid)
            if args.json_share:  # the same level again, that share of it constrained
                json_levels[str(concurrency)] = await run_level(
                    client, info, concurrency, requests, args.max_tokens, args.json_share
                )

    result: dict = {
        "url": args.url,
        "model": info.model,
        "max_tokens": args.max_tokens,
        "ignore_eos": info.ignore_eos,
        "tokens_counted_from": "usage" if info.stream_usage else "stream chunks",
        "levels": levels,
        "server_memory": memory,
        "engine": engine,
        "ratios": {},
        "targets": {
            "streams16_vs_streams1": TARGET_16_VS_1_STREAMS,
            "service_1stream_vs_engine": TARGET_SERVICE_VS_ENGINE,
        },
    }
    one = levels.get("1", {}).get("output_tokens_per_s")
    sixteen = levels.get("16", {}).get("output_tokens_per_s")
    if one and sixteen:
        result["ratios"]["streams16_vs_streams1"] = round(sixteen / one, 2)
    if one and engine.get("request_tokens_per_s"):
        result["ratios"]["service_1stream_vs_engine"] = round(one / engine["request_tokens_per_s"], 2)
    if json_levels:
        result["json_levels"] = json_levels
        result["targets"]["json_share_vs_free"] = TARGET_JSON_VS_FREE
        for level, mixed in json_levels.items():
            free = levels[level]["output_tokens_per_s"]
            if free and mixed["output_tokens_per_s"]:
                ratio = round(mixed["output_tokens_per_s"] / free, 3)
                result["ratios"][f"json_share_vs_free_streams{level}"] = ratio
    decode_rate = engine.get("decode_batch1_tokens_per_s")
    tpot = levels.get("1", {}).get("tpot_ms", {}).get("p50")
    if tpot and decode_rate:
        result["ratios"]["service_1stream_decode_vs_engine_decode"] = round(1000 / tpot / decode_rate, 2)
    return result


def format_table(result: dict) -> str:
    """The figures for a terminal."""

    def cell(value) -> str:
        return "-" if value is None else f"{value:g}"

    lines = [
        f"{result['url']}  model {result['model']}  max_tokens {result['max_tokens']}  "
        f"ignore_eos {result['ignore_eos']}",
        f"{'streams':>7} {'requests':>8} {'errors':>6} {'tokens/s':>9} {'TTFT p50/p95 ms':>17} "
        f"{'TPOT p50/p95 ms':>17} {'E2E p50/p95 ms':>17}",
    ]
    rows = [(level, "") for level in result["levels"].values()]
    if "json_levels" in result:  # each level free, then with its share constrained
        rows = []
        for key, level in result["levels"].items():
            json_level = result["json_levels"][key]
            rows += [(level, " free"), (json_level, f" json {json_level['json_share']:g}")]
    for level, kind in rows:
        ttft, tpot, e2e = level["ttft_ms"], level["tpot_ms"], level["e2e_ms"]
        lines.append(
            f"{level['concurrency']:>7} {level['requests']:>8} {level['errors']:>6} "
            f"{level['output_tokens_per_s']:>9g} {cell(ttft['p50']) + ' / ' + cell(ttft['p95']):>17} "
            f"{cell(tpot['p50']) + ' / ' + cell(tpot['p95']):>17} "
            f"{cell(e2e['p50']) + ' / ' + cell(e2e['p95']):>17}{kind}"
        )
        for sample in level["error_samples"]:
            lines.append(f"        error: {sample}")
    memory = result["server_memory"]
    if memory["idle"] is not None:
        after = ", ".join(
            f"after {level} streams {_mib(m['rss_bytes'])}"
            for level, m in memory["after_level"].items()
            if m is not None
        )
        peak = [m["peak_rss_bytes"] for m in memory["after_level"].values() if m and m["peak_rss_bytes"]]
        lines.append(
            f"server RSS: idle {_mib(memory['idle']['rss_bytes'])}, {after}"
            + (f", peak {_mib(max(peak))}" if peak else "")
            + f" ({memory['source']})"
        )
    else:
        lines.append(f"server RSS: unknown ({memory['source']} not readable)")
    engine = result["engine"]
    if "skipped" in engine:
        lines.append(f"engine batch-1 decode: skipped ({engine['skipped']})")
    else:
        lines.append(
            f"engine alone: {engine['request_tokens_per_s']:g} tokens/s per request, "
            f"{engine['decode_batch1_tokens_per_s']:g} tokens/s batch-1 decode "
            f"({engine['checkpoint']}, {engine['device']}, {engine['threads']} threads)"
        )
    for name, value in result["ratios"].items():
        target = result["targets"].get(name)
        if name.startswith("json_share_vs_free"):
            target = result["targets"]["json_share_vs_free"]
        lines.append(f"{name}: {value:g}" + (f" (target >= {target:g})" if target else ""))
    return "\n".join(lines)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"expected positive concurrency levels, got {text!r}")
    return levels


def _share(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return share


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m bench.serve",
        description="Stream chat completions from a running server at several concurrencies.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--model", help="model id to request (default: the first of GET /v1/models)")
    parser.add_argument(
        "--concurrency", type=_levels, default=[1, 4, 16, 64], help="streams per level (default 1,4,16,64)"
    )
    parser.add_argument(
        "--requests-per-level",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="requests per level, at least the level's concurrency (default: 4 x concurrency, at least 16)",
    )
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        default=128,
        help="tokens per reply (default 128: a typical chat reply)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    parser.add_argument(
        "--wait-ready", type=float, default=60.0, metavar="S", help="wait up to S s for /ready (default 60)"
    )
    parser.add_argument(
        "--server-pid",
        type=non_negative_int,
        metavar="PID",
        help="the server's process on this machine: its RSS from /proc/PID/status (default: from /metrics)",
    )
    parser.add_argument(
        "--json-share",
        type=_share,
        default=0.0,
        metavar="F",
        help="also run each level with this share of the requests constrained by a JSON schema "
        "(response_format), e.g. 0.5; ratios json_share_vs_free_streamsN (default 0: skip)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    engine = parser.add_argument_group("the engine baseline (measured in this process)")
    engine.add_argument("--checkpoint", metavar="DIR", help="the checkpoint the server runs (default: skip)")
    engine.add_argument("--step", type=non_negative_int, help="checkpoint step (default: the latest)")
    engine.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    engine.add_argument("--dtype", choices=DTYPE_CHOICES, help="weights dtype (default: as nanochat)")
    engine.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        result = asyncio.run(run_serve_benchmark(args))
    except (UsageError, BenchError) as e:
        print(f"bench_serve: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
