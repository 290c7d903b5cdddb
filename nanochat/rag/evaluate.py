"""`nanochat rag eval --index DIR`: does retrieval find the document that answers a question, how fast, and do
answers cite only sources they were given.

The questions are `eval_questions.jsonl` beside this module: hand-written questions a user would ask about
the repository's README.md and docs/, each with the file(s) that answer it (`sources`, paths as indexed
from the repository's root) and, where one section answers it, its heading (`headings`, for people; the
scores use the files). Per retrieval mode (bm25, dense with the index's embedder and with each `--embedder`
given, hybrid, rerank with `--reranker`):

- recall@1 and recall@5: the share of questions with an expected source among the first 1 / 5 chunks;
- MRR: the mean of 1 / the rank of the first chunk from an expected source (0 when none is in the top k);
- latency: each question's search time, p50 and p95, first with empty caches (a fresh Retriever per mode),
  then the same questions again (the result cache answers).

Citation validity: an answer may cite only the sources it was given: every `[n]` in it must be between 1
and the number of sources (`citation_check`). With `--chat-url URL` the first `--chat-questions` questions
go to a running service (`POST /v1/chat/completions` with `retrieval`) and each reply is checked against the
`citations` the response carries.

Writes a Markdown report (`--out`, default docs/rag-eval.md, generated: do not edit) and the same figures as
JSON (`--json`). It only reads the index; it never imports the service.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nanochat.rag import RagError

QUESTIONS = Path(__file__).resolve().parent / "eval_questions.jsonl"
REPORT = Path(__file__).resolve().parents[2] / "docs" / "rag-eval.md"
K = 5
CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    sources: tuple[str, ...]
    headings: tuple[str, ...] = ()


@dataclass
class ModeResult:
    mode: str
    embedder: str
    questions: int
    recall_at_1: float
    recall_at_5: float
    mrr: float
    p50_ms: float
    p95_ms: float
    cached_p50_ms: float
    cached_p95_ms: float
    misses: list[str] = field(default_factory=list)  # ids of questions with no expected source in the top k


@dataclass
class CitationResult:
    answers: int
    citations: int  # [n] found in the answers, all together
    invalid: int  # of them, numbers outside 1..the sources given
    answers_citing: int  # answers with at least one [n]
    answers_supported: int = 0  # answers with a sentence its sources support (the service's `supports`)

    @property
    def validity(self) -> float | None:
        return None if self.citations == 0 else (self.citations - self.invalid) / self.citations


# ---- the questions ------------------------------------------------------------------------------------
def load_questions(path: str | Path = QUESTIONS) -> list[Question]:
    """The evaluation set; a RagError naming the line for anything malformed."""
    questions, seen = [], set()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise RagError(f"{path}: cannot read the questions ({e.strerror})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question = Question(
                str(row["id"]), str(row["question"]), tuple(row["sources"]), tuple(row.get("headings", ()))
            )
        except (ValueError, KeyError, TypeError) as e:
            raise RagError(f"{path}:{number}: not a question ({type(e).__name__}: {e})") from None
        if not question.question.strip() or not question.sources:
            raise RagError(f"{path}:{number}: a question needs text and at least one source")
        if question.id in seen:
            raise RagError(f"{path}:{number}: id {question.id!r} is used twice")
        seen.add(question.id)
        questions.append(question)
    if not questions:
        raise RagError(f"{path}: no questions")
    return questions


# ---- the metrics --------------------------------------------------------------------------------------
def is_expected(source: str, expected: Sequence[str]) -> bool:
    """A chunk's source (as indexed: relative, or absolute when indexed from elsewhere) is one of the
    expected files (relative to the repository's root)."""
    path = Path(source).as_posix()
    return any(path == want or path.endswith("/" + want) for want in expected)


def first_relevant_rank(sources: Sequence[str], expected: Sequence[str]) -> int | None:
    """The 1-based rank of the first source that is expected, None when none is."""
    return next((rank for rank, source in enumerate(sources, start=1) if is_expected(source, expected)), None)


def ranking_scores(ranks: Sequence[int | None]) -> dict[str, float]:
    """recall@1, recall@5 and MRR from each question's first relevant rank (None: not found in the top k)."""
    n = len(ranks)
    if n == 0:
        raise ValueError("no questions to score")
    return {
        "recall_at_1": sum(1 for r in ranks if r is not None and r <= 1) / n,
        "recall_at_5": sum(1 for r in ranks if r is not None and r <= 5) / n,
        "mrr": sum(1 / r for r in ranks if r is not None) / n,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation between the closest ranks, numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def cited_numbers(answer: str) -> list[int]:
    """Every [n] in an answer, in order (repeats kept)."""
    return [int(match.group(1)) for match in CITATION.finditer(answer)]


def citation_check(answers: Sequence[tuple[str, int]]) -> CitationResult:
    """(answer, number of sources it was given) pairs: how many [n] they hold, and how many point at no
    source (n < 1 or n > the sources given)."""
    total = invalid = citing = 0
    for answer, sources in answers:
        numbers = cited_numbers(answer)
        total += len(numbers)
        invalid += sum(1 for n in numbers if not 1 <= n <= sources)
        citing += bool(numbers)
    return CitationResult(len(answers), total, invalid, citing)


# ---- running it ---------------------------------------------------------------------------------------
def evaluate_mode(
    index_dir: str | Path, questions: Sequence[Question], mode: str, reranker: str | None = None, k: int = K
) -> ModeResult:
    """One mode over every question, with a fresh Retriever (empty caches), then the same again (cached)."""
    from nanochat.rag.index import Retriever

    retriever = Retriever.load(index_dir, reranker=reranker)
    ranks, cold, warm, misses = [], [], [], []
    for timings in (cold, warm):
        for question in questions:
            started = time.perf_counter()
            hits = retriever.search(question.question, k=k, mode=mode)
            timings.append((time.perf_counter() - started) * 1000)
            if timings is cold:
                rank = first_relevant_rank([hit.chunk.source for hit in hits], question.sources)
                ranks.append(rank)
                if rank is None:
                    misses.append(question.id)
    scores = ranking_scores(ranks)
    return ModeResult(
        mode=mode,
        embedder=retriever.embedder_name if mode != "bm25" else "-",
        questions=len(questions),
        recall_at_1=scores["recall_at_1"],
        recall_at_5=scores["recall_at_5"],
        mrr=scores["mrr"],
        p50_ms=percentile(cold, 50),
        p95_ms=percentile(cold, 95),
        cached_p50_ms=percentile(warm, 50),
        cached_p95_ms=percentile(warm, 95),
        misses=misses,
    )


def index_with_embedder(index_dir: Path, embedder: str, work: Path) -> Path:
    """The same files as `index_dir`, indexed again with another embedder (in `work`)."""
    from nanochat.rag.index import build_index

    manifest = json.loads((index_dir / "manifest.json").read_text())
    out = work / re.sub(r"[^A-Za-z0-9._-]+", "_", embedder)
    build_index(list(manifest["files"]), out, embedder)
    return out


def chat_citations(
    url: str, index: str, questions: Sequence[Question], k: int, max_tokens: int, timeout_s: float = 120
) -> CitationResult:
    """Ask a running service each question with `retrieval`; check each reply against its citations."""
    import httpx

    answers, supported = [], 0
    with httpx.Client(base_url=url.rstrip("/").removesuffix("/v1"), timeout=timeout_s) as client:
        for question in questions:
            body = {
                "messages": [{"role": "user", "content": question.question}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "retrieval": {"index": index, "k": k},
            }
            response = client.post("/v1/chat/completions", json=body)
            if response.status_code != 200:
                raise RagError(f"{url}: chat answered {response.status_code}: {response.text[:300]}")
            reply = response.json()
            answers.append((reply["choices"][0]["message"]["content"], len(reply.get("citations") or [])))
            supported += bool(reply.get("supports"))
    return replace(citation_check(answers), answers_supported=supported)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from nanochat.rag.index import Retriever

    index_dir = Path(args.index)
    questions = load_questions(args.questions)
    default = Retriever.load(index_dir)  # checks the index before anything runs
    results = [evaluate_mode(index_dir, questions, mode) for mode in ("bm25", "dense", "hybrid")]
    if args.reranker:
        results.append(evaluate_mode(index_dir, questions, "rerank", reranker=args.reranker))
    with tempfile.TemporaryDirectory() as work:
        for embedder in args.embedder or []:
            other = index_with_embedder(index_dir, embedder, Path(work))
            results += [evaluate_mode(other, questions, mode) for mode in ("dense", "hybrid")]
    citations = None
    if args.chat_url:
        asked = questions[: args.chat_questions]
        citations = chat_citations(args.chat_url, args.chat_index, asked, args.chat_k, args.chat_max_tokens)
    manifest = default.manifest
    return {
        "command": "nanochat rag eval " + " ".join(args.argv),
        "index": {
            "folder": str(index_dir),
            "files": manifest["counts"]["files"],
            "chunks": manifest["counts"]["chunks"],
            "embedder": manifest["embedder"],
            "dims": manifest["dims"],
        },
        "questions": len(questions),
        "k": K,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs at load average {os.getloadavg()[0]:.1f}, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "modes": [asdict(result) for result in results],
        "citations": None if citations is None else {**asdict(citations), "validity": citations.validity},
        "chat": None
        if citations is None
        else {"url": args.chat_url, "index": args.chat_index, "questions": citations.answers},
    }


# ---- the report ---------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    index = report["index"]
    lines = [
        "# Retrieval evaluation",
        "",
        f"Generated by `{report['command']}` (nanochat/rag/evaluate.py); do not edit by hand.",
        "",
        f"{report['questions']} hand-written questions about README.md and docs/ "
        "(`nanochat/rag/eval_questions.jsonl`), each with the file(s) that answer it. Index: "
        f"{index['files']} files, {index['chunks']} chunks, embedder `{index['embedder']}` "
        f"({index['dims']} dimensions). Machine: {report['machine']}.",
        "",
        "recall@k: share of questions with a chunk of an expected file among the first k; MRR: mean of 1 / "
        f"the rank of the first such chunk (0 when none in the top {report['k']}). Latency: one search, "
        "p50 / p95 over the questions, first with empty caches (a fresh retriever per mode; the dense "
        "embedder's query cache and the result cache both cold), then the same questions again (cached).",
        "",
        "| mode | embedder | recall@1 | recall@5 | MRR | p50 ms | p95 ms | cached p50 ms | cached p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in report["modes"]:
        lines.append(
            f"| {m['mode']} | {m['embedder']} | {m['recall_at_1']:.3f} | {m['recall_at_5']:.3f} | "
            f"{m['mrr']:.3f} | {m['p50_ms']:.2f} | {m['p95_ms']:.2f} | {m['cached_p50_ms']:.3f} | "
            f"{m['cached_p95_ms']:.3f} |"
        )
    lines.append("")
    misses = {
        m["mode"] + (f" ({m['embedder']})" if m["embedder"] != "-" else ""): m["misses"]
        for m in report["modes"]
    }
    lines.append(
        "Questions with no expected file in the top 5, by id: "
        + "; ".join(f"{mode}: {', '.join(ids) or 'none'}" for mode, ids in misses.items())
        + "."
    )
    lines.append("")
    citations = report["citations"]
    if citations is None:
        lines.append("Citation validity: not measured in this run (`--chat-url URL` asks a running service).")
    else:
        validity = citations["validity"]
        figure = "no [n] to check" if validity is None else f"{validity:.3f} valid"
        lines.append(
            f"Citation validity, from a running service ({report['chat']['questions']} questions with "
            f"`retrieval`): {citations['citations']} cited numbers in {citations['answers']} answers "
            f"({citations['answers_citing']} answers cite at all), {citations['invalid']} of them point "
            f"at no source given: {figure}. Grounding (the response's `supports`, "
            f"nanochat/rag/attribution.py): {citations.get('answers_supported', 0)} of "
            f"{citations['answers']} answers have a sentence whose content words are mostly in a source "
            "given."
        )
    lines.append("")
    return "\n".join(lines)


# ---- the command --------------------------------------------------------------------------------------
def register(commands: Any) -> None:
    """Add `eval` to the `nanochat rag` steps (nanochat/rag/cli.py)."""
    parser = commands.add_parser(
        "eval", help="recall@1/@5, MRR, latency and citation validity on the eval set"
    )
    parser.add_argument("--index", required=True, metavar="DIR", help="index folder (from `rag index`)")
    parser.add_argument(
        "--questions", type=Path, default=QUESTIONS, metavar="FILE", help="default: the bundled set"
    )
    parser.add_argument(
        "--embedder",
        action="append",
        metavar="ID|DIR",
        help="also index with this embedder and score dense and hybrid (repeatable)",
    )
    parser.add_argument("--reranker", metavar="ID|DIR", help="a CrossEncoder: also score mode rerank")
    parser.add_argument(
        "--chat-url", metavar="URL", help="a running service whose chat checks citation validity"
    )
    parser.add_argument("--chat-index", default="docs", metavar="NAME", help="its index name (default docs)")
    parser.add_argument(
        "--chat-questions", type=int, default=10, metavar="N", help="questions asked (default 10)"
    )
    parser.add_argument("--chat-k", type=int, default=2, metavar="K", help="sources per question (default 2)")
    parser.add_argument("--chat-max-tokens", type=int, default=48, metavar="N", help="default 48")
    parser.add_argument(
        "--out", type=Path, default=REPORT, metavar="FILE", help="Markdown report (default docs/rag-eval.md)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    parser.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    args.argv = _argv(args)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(report), encoding="utf-8")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for m in report["modes"]:
        print(
            f"{m['mode']:>7} {m['embedder']:>10}: recall@1 {m['recall_at_1']:.3f}"
            f"  recall@5 {m['recall_at_5']:.3f}  MRR {m['mrr']:.3f}"
            f"  p50 {m['p50_ms']:.2f} ms  p95 {m['p95_ms']:.2f} ms"
            f"  (cached p95 {m['cached_p95_ms']:.3f} ms)"
        )
    print(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The options as given, for the report's command line (paths as typed)."""
    argv = ["--index", str(args.index)]
    if args.questions != QUESTIONS:
        argv += ["--questions", str(args.questions)]
    for embedder in args.embedder or []:
        argv += ["--embedder", embedder]
    if args.reranker:
        argv += ["--reranker", args.reranker]
    if args.chat_url:
        argv += ["--chat-url", args.chat_url, "--chat-questions", str(args.chat_questions)]
    return argv
