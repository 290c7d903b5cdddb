"""Retrieval latency of an index before and after caching, and a quick quality check, as one JSON object:

    python -m bench.rag_latency                         # builds the bundled docs index (README.md, docs/)
    python -m bench.rag_latency --index models/rag/docs --repeats 20
    python -m bench.rag_latency --store chroma --chroma-url http://127.0.0.1:8000   # a running server

For each mode (bm25, dense, hybrid) it times `Retriever.search` over QUERIES, `repeats` rounds, once with
the caches off ("uncached": every search embeds the query and ranks) and once with them on after one warm
round ("cached": repeated queries are result-cache hits, as a service sees for popular questions), and
reports p50/p95 in milliseconds against the goal (p95 <= 20 ms). It also reports recall@1, recall@5 and
MRR of each mode on QUERIES (a small hand-written set, each with its expected source: a smoke check of the
embedder; `nanochat rag eval` has the real evaluation). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from nanochat.rag.index import Retriever, build_index

REPO_ROOT = Path(__file__).resolve().parents[1]
GOAL_P95_MS = 20.0
MODES = ("bm25", "dense", "hybrid")
QUERIES = (
    ("how do I roll back a release?", "docs/runbooks/release.md"),
    ("what happens when the error rate alert fires", "docs/runbooks/NanochatHighErrorRate.md"),
    ("the server is using too much memory", "docs/runbooks/NanochatHighMemory.md"),
    ("requests are being rejected with 429", "docs/runbooks/NanochatHighRejectionRate.md"),
    ("time to first token is too slow", "docs/runbooks/NanochatHighTimeToFirstToken.md"),
    ("the admission queue is full", "docs/runbooks/NanochatQueueSaturated.md"),
    ("prometheus cannot scrape the target", "docs/runbooks/NanochatTargetDown.md"),
    ("no requests are arriving at all", "docs/runbooks/NanochatNoTraffic.md"),
    ("the readiness probe fails after start", "docs/runbooks/NanochatNotReady.md"),
    ("how does prefix caching reuse the KV cache", "docs/serving.md"),
    ("run the serving benchmark and read its figures", "docs/serving.md"),
    ("int8 weight quantization accuracy and memory", "docs/quantization.md"),
    ("how is the static KV cache laid out in the engine", "docs/engine.md"),
    ("export a checkpoint to Hugging Face transformers", "docs/hf.md"),
    ("fine-tune with LoRA compared to full fine-tuning", "docs/learn/finetune-comparison.md"),
    ("what does the infrastructure cost per month", "docs/infra.md"),
    ("bootstrap a Google Cloud project from empty", "docs/infra.md"),
    ("pretraining shards in parquet from my own text", "docs/data.md"),
    ("SFT chat fine-tuning of the base model", "docs/training.md"),
    ("evaluate bits per byte on the validation shard", "docs/training.md"),
    ("prompt injection guardrail classifier", "docs/classify.md"),
    ("the load test gate before a release", "docs/delivery.md"),
    ("build the container image", "docs/delivery.md"),
    ("which metrics and SLOs does the service export", "docs/observability.md"),
    ("traces with OpenTelemetry", "docs/observability.md"),
    ("the 60 day learning path", "docs/learning-path.md"),
    ("quick start: serve the demo model locally", "README.md"),
    ("experiment templates and the result log", "docs/experiments/README.md"),
    ("draining requests on SIGTERM and worker restarts", "docs/serving.md"),
    ("OpenAI compatibility of the chat completions fields", "docs/serving.md"),
)


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3), "p95_ms": round(p95 * 1000, 3)}


def time_searches(retriever: Retriever, mode: str, repeats: int, k: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        for query, _ in QUERIES:
            started = time.perf_counter()
            retriever.search(query, k=k, mode=mode)
            samples.append(time.perf_counter() - started)
    return samples


def quality(retriever: Retriever, mode: str) -> dict[str, float]:
    found_at = []
    for query, expected in QUERIES:
        sources = [h.chunk.source for h in retriever.search(query, k=10, mode=mode)]
        found_at.append(sources.index(expected) + 1 if expected in sources else None)
    n = len(QUERIES)
    return {
        "recall@1": round(sum(r == 1 for r in found_at if r) / n, 3),
        "recall@5": round(sum(r <= 5 for r in found_at if r) / n, 3),
        "mrr": round(sum(1 / r for r in found_at if r) / n, 3),
    }


def run(index_dir: Path, repeats: int, k: int, store: str = "local", chroma_url: str | None = None) -> dict:
    uncached = Retriever.load(index_dir, store=store, chroma_url=chroma_url, cache_size=0)
    cached = Retriever.load(index_dir, store=store, chroma_url=chroma_url)
    report: dict = {"index": str(index_dir), "chunks": len(uncached.chunks), "queries": len(QUERIES)}
    report["store"] = store
    report["embedder"] = uncached.embedder_name
    report["k"], report["repeats"], report["goal_p95_ms"] = k, repeats, GOAL_P95_MS
    for mode in MODES:
        time_searches(uncached, mode, 1, k)  # first touches of the mmapped files
        before = percentiles_ms(time_searches(uncached, mode, repeats, k))
        time_searches(cached, mode, 1, k)
        after = percentiles_ms(time_searches(cached, mode, repeats, k))
        report[mode] = {"uncached": before, "cached": after, "quality": quality(uncached, mode)}
    report["cache_stats"] = cached.cache_stats()
    report["goal_met_uncached"] = all(report[m]["uncached"]["p95_ms"] <= GOAL_P95_MS for m in MODES)
    report["goal_met_cached"] = all(report[m]["cached"]["p95_ms"] <= GOAL_P95_MS for m in MODES)
    report["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="an index folder (default: build README.md + docs/ anew)")
    parser.add_argument("--repeats", type=int, default=10, help="rounds over the queries (default 10)")
    parser.add_argument("-k", type=int, default=4, help="chunks per search (default 4)")
    parser.add_argument("--store", choices=("local", "chroma"), default="local", help="default local (FAISS)")
    parser.add_argument("--chroma-url", help="a running Chroma server, with --store chroma")
    args = parser.parse_args(argv)
    if args.index is not None:
        report = run(args.index, args.repeats, args.k, args.store, args.chroma_url)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = Path.cwd()
            os.chdir(REPO_ROOT)  # sources named as in the repository (README.md, docs/...)
            try:
                build_index(["README.md", "docs"], Path(tmp) / "docs")
            finally:
                os.chdir(cwd)
            report = run(Path(tmp) / "docs", args.repeats, args.k, args.store, args.chroma_url)
            report["index"] = "README.md + docs/ (built for this run)"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
