"""`nanochat rag ...`: build and search retrieval indexes, train the offline embedder.

- `nanochat rag index PATH... --out DIR [--embedder offline|ID|DIR]`: index Markdown, text and HTML files
  (folders: every such file under them), incrementally when DIR holds an index; prints the build summary.
- `nanochat rag search "query" --index DIR [-k 4] [--mode hybrid] [--json]`: the best chunks.
- `nanochat rag train-embedder [--out DIR] [PATH...]`: fit the offline LSA embedder (embedders.py) on the
  repository's README.md and docs/ (or the given paths); models/rag/embedder/ is the committed one.

Errors a user can cause are RagError (a ValueError): the main CLI prints them as one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from nanochat.cliargs import positive_int
from nanochat.rag import evaluate
from nanochat.rag.chunking import MAX_CHARS, OVERLAP
from nanochat.rag.embedders import OFFLINE, OFFLINE_DIM, OFFLINE_DIR, REPO_ROOT, TRAINING_PATHS
from nanochat.rag.index import MODES
from nanochat.rag.stores import STORES


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `rag` command group to the main CLI's subparsers and return its parser; the parser's
    `commands` attribute (the steps' subparsers) lets other modules add steps."""
    rag = subparsers.add_parser("rag", help="retrieval: index documents, search them, train the embedder")
    commands = rag.add_subparsers(dest="rag_command", required=True, metavar="STEP", parser_class=type(rag))
    rag.commands = commands  # other modules (the evaluation) add their steps here

    index = commands.add_parser("index", help="index Markdown, text and HTML files (incremental)")
    index.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    index.add_argument("--out", required=True, metavar="DIR", help="index folder (updated in place)")
    index.add_argument(
        "--embedder",
        default=OFFLINE,
        metavar="ID|DIR",
        help="'offline' (default: the committed LSA embedder), a sentence-transformers id or folder, or a "
        "folder written by train-embedder",
    )
    index.add_argument(
        "--max-chars", type=positive_int, default=MAX_CHARS, help=f"chunk size (default {MAX_CHARS})"
    )
    index.add_argument(
        "--overlap", type=int, default=OVERLAP, help=f"chunk overlap in characters (default {OVERLAP})"
    )
    index.set_defaults(handler=cmd_index)

    search = commands.add_parser("search", help="the chunks of an index that best match a query")
    search.add_argument("query")
    search.add_argument("--index", required=True, metavar="DIR", help="index folder (from `rag index`)")
    search.add_argument("-k", type=positive_int, default=4, help="how many chunks (default 4)")
    search.add_argument("--mode", choices=MODES, default="hybrid", help="default hybrid")
    search.add_argument("--store", choices=STORES, default="local", help="local (FAISS, default) or chroma")
    search.add_argument("--chroma-url", metavar="URL", help="the Chroma server, with --store chroma")
    search.add_argument("--reranker", metavar="ID|DIR", help="a CrossEncoder, for --mode rerank")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(handler=cmd_search)

    train = commands.add_parser("train-embedder", help="fit the offline LSA embedder on the docs")
    train.add_argument(
        "paths", nargs="*", metavar="PATH", help="training files or folders (default: README.md and docs/)"
    )
    train.add_argument(
        "--out", type=Path, default=OFFLINE_DIR, metavar="DIR", help="default models/rag/embedder"
    )
    train.add_argument(
        "--dim", type=positive_int, default=OFFLINE_DIM, help=f"dimensions (default {OFFLINE_DIM})"
    )
    train.set_defaults(handler=cmd_train_embedder)
    evaluate.register(commands)  # `nanochat rag eval` (nanochat/rag/evaluate.py)
    return rag


def cmd_index(args: argparse.Namespace) -> int:
    from nanochat.rag.index import build_index

    started = time.perf_counter()
    manifest = build_index(
        args.paths, args.out, args.embedder, max_chars=args.max_chars, overlap=args.overlap
    )
    build = manifest["build"]
    print(
        f"{args.out}: {manifest['counts']['files']} files, {manifest['counts']['chunks']} chunks "
        f"({manifest['embedder']}, {manifest['dims']} dims); changed {len(build['changed'])}, "
        f"removed {len(build['removed'])}, embedded {build['embedded']} chunks "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from nanochat.rag.index import Retriever

    retriever = Retriever.load(
        args.index, store=args.store, chroma_url=args.chroma_url, reranker=args.reranker
    )
    hits = retriever.search(args.query, k=args.k, mode=args.mode)
    if args.json:
        rows = [
            {
                "rank": h.rank,
                "score": h.score,
                "id": h.chunk.id,
                "source": h.chunk.source,
                "heading": h.chunk.heading,
                "start": h.chunk.start,
                "end": h.chunk.end,
                "text": h.chunk.text,
            }
            for h in hits
        ]
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=2)
        print()
        return 0
    for h in hits:
        where = f"{h.chunk.source}:{h.chunk.start}-{h.chunk.end}"
        print(f"[{h.rank}] {h.score:.4f}  {where}  {h.chunk.heading}")
        print("    " + " ".join(h.chunk.text.split())[:200])
    return 0


def cmd_train_embedder(args: argparse.Namespace) -> int:
    from nanochat.rag.embedders import train_offline_embedder

    paths = [Path(p) for p in args.paths] or [REPO_ROOT / p for p in TRAINING_PATHS]
    started = time.perf_counter()
    config = train_offline_embedder(paths, args.out, dim=args.dim)
    print(
        f"{args.out}: {config['dim']} dims over {config['vocabulary']} terms from {config['paragraphs']} "
        f"paragraphs (explained variance {config['explained_variance']}) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0
