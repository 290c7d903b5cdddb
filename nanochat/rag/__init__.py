"""Retrieval over a folder of documents: chunk, embed, store, search (hybrid BM25 + dense), cache.

The pipeline, one module each: `chunking` (Markdown, text and HTML into heading-aware chunks whose spans
round-trip to the source text), `embedders` (the offline LSA embedder the project trains itself, or any
sentence-transformers model; a CrossEncoder re-ranker), `stores` (FAISS on disk, memory-mapped, or a Chroma
server shared by several instances), `index` (`build_index`, incremental by content hash, and `Retriever`,
which searches with reciprocal rank fusion and caches query embeddings and results), `cli` (`nanochat rag`).

Nothing here knows about HTTP or the chat service: the service (app/) calls `Retriever.search`.
"""

from __future__ import annotations

from dataclasses import dataclass


class RagError(ValueError):
    """A user-fixable problem (missing or corrupt index, unknown embedder, bad mode): a one-line message.
    A ValueError, as the CLI's other user errors, so `nanochat` prints it as one line."""


@dataclass(frozen=True)
class Chunk:
    """A contiguous piece of one source: `text == source_text(source)[start:end]` (see chunking.py)."""

    id: str  # stable: a hash of source, heading, start and end
    source: str  # the path as given to the indexer (relative to the working folder when under it)
    heading: str  # the heading trail, " > " joined ("" before the first heading, and for plain text)
    start: int  # character span in the source's text
    end: int
    text: str


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # the mode's score: BM25 score, cosine similarity, fused RRF score or re-ranker logit
    rank: int  # 1-based


__all__ = ["Chunk", "Hit", "RagError"]
