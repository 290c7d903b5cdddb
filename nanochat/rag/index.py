"""Build an index folder from documents, load it, search it.

`build_index(paths, out_dir)` writes (all in out_dir):
  manifest.json   files and their sha256, embedder, dims, counts, the index version, what the build changed
  chunks.jsonl    one Chunk a line, in row order (rows are what the stores and BM25 return)
  embeddings.npz  the chunk vectors keyed by the sha256 of what was embedded: the cache that makes a
                  re-index embed only new or changed chunks (valid while the embedder's fingerprint holds)
  dense.faiss     the FAISS index of those vectors (stores.py)
  bm25/           the BM25 index (bm25s), over the same words as the offline embedder (embedders.tokenize)
  embedder/       a copy of the offline embedder when it is the one used, so the folder is self-contained
Re-indexing is incremental: a file whose content hash is unchanged keeps its chunks, changed files are
chunked again, files no longer given are dropped, and only chunks not in the embedding cache are embedded.

`Retriever.load(index_dir)` then answers `search(query, k, mode)`: "bm25", "dense", "hybrid" (reciprocal
rank fusion of both, k=60) or "rerank" (hybrid candidates re-scored by a CrossEncoder, when one is given).
Query embeddings and results are kept in bounded LRU caches keyed by the index version; `cache_stats()`
counts their hits and misses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from nanochat.rag import Chunk, Hit, RagError
from nanochat.rag.chunking import MAX_CHARS, OVERLAP, SUFFIXES, chunk_source
from nanochat.rag.embedders import OFFLINE, OFFLINE_DIR, Embedder, OfflineEmbedder, load_embedder, tokenize
from nanochat.rag.stores import FAISS_FILE, STORES, ChromaStore, FaissStore, write_faiss

FORMAT = 1
MODES = ("bm25", "dense", "hybrid", "rerank")
RRF_K = 60  # reciprocal rank fusion: score = sum over rankings of 1 / (RRF_K + rank)
CANDIDATES = 50  # how deep each ranking goes before fusion
RERANK_CANDIDATES = 20
CACHE_SIZE = 1024
MAX_K = 100
MANIFEST = "manifest.json"


def expand_paths(paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(file, source name) of each given file and each .md/.txt/.html file under each given folder, sorted."""
    found: dict[str, Path] = {}
    cwd = Path.cwd().resolve()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            files = [path]
        else:
            raise RagError(f"{given}: no such file or folder")
        for file in files:
            resolved = file.resolve()
            source = str(resolved.relative_to(cwd)) if resolved.is_relative_to(cwd) else str(file)
            found.setdefault(source, file)
    if not found:
        raise RagError(f"no .md, .txt or .html files in {', '.join(map(str, paths))}")
    return sorted(((file, source) for source, file in found.items()), key=lambda fs: fs[1])


def build_index(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    embedder: str = OFFLINE,
    max_chars: int = MAX_CHARS,
    overlap: int = OVERLAP,
    offline_dir: Path = OFFLINE_DIR,
) -> dict[str, Any]:
    """Index the files (incrementally when out_dir holds an index already); returns the manifest."""
    import bm25s

    out = Path(out_dir)
    files = expand_paths(paths)
    model = load_embedder(embedder, offline_dir)
    chunking = {"max_chars": max_chars, "overlap": overlap}
    old, old_chunks = None, {}
    try:  # an unreadable earlier index is rebuilt from scratch
        old = _read_manifest(out) if (out / MANIFEST).is_file() else None
        for chunk in _read_chunks(out) if old is not None and old.get("chunking") == chunking else ():
            old_chunks.setdefault(chunk.source, []).append(chunk)
    except RagError:
        old, old_chunks = None, {}

    manifest_files, chunks, changed = {}, [], []
    for path, source in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        previous = (old or {}).get("files", {}).get(source)
        if previous is not None and previous["sha256"] == digest and source in old_chunks:
            file_chunks = old_chunks[source]
        else:
            file_chunks = chunk_source(path, source, max_chars=max_chars, overlap=overlap)
            changed.append(source)
        manifest_files[source] = {"sha256": digest, "chunks": len(file_chunks)}
        chunks.extend(file_chunks)
    removed = sorted(set((old or {}).get("files", {})) - set(manifest_files))

    cache = _read_embedding_cache(out) if old and old.get("embedder_fingerprint") == model.fingerprint else {}
    keys = [_content_key(c) for c in chunks]
    missing = sorted({k for k in keys if k not in cache})
    texts = {_content_key(c): embedding_text(c) for c in chunks}
    if missing:
        cache.update(zip(missing, model.embed([texts[k] for k in missing]), strict=True))
    vectors = np.stack([cache[k] for k in keys]) if keys else np.zeros((0, model.dim), np.float32)

    # written to a staging folder, then moved into place (the manifest last): a process that has the old
    # files open or memory-mapped keeps reading them whole
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        with open(staging / "chunks.jsonl", "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
        with open(staging / "embeddings.npz", "wb") as f:
            np.savez(f, keys=np.array(keys, dtype=str), vectors=vectors.astype(np.float32))
        write_faiss(vectors, staging)
        bm25 = bm25s.BM25()
        bm25.index([tokenize(embedding_text(c)) or ["\0"] for c in chunks], show_progress=False)
        bm25.save(str(staging / "bm25"))
        if isinstance(model, OfflineEmbedder):
            shutil.copytree(offline_dir if embedder == OFFLINE else Path(embedder), staging / "embedder")
        for name in ("chunks.jsonl", "embeddings.npz", FAISS_FILE, "bm25", "embedder"):
            _move_into_place(staging / name, out / name, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    # what the chunks are and say, and how they were embedded: a shared (Chroma) collection's name
    identity = "\n".join(f"{c.id} {key}" for c, key in zip(chunks, keys, strict=True)) + model.fingerprint
    version = hashlib.sha256(identity.encode()).hexdigest()[:16]
    manifest = {
        "format": FORMAT,
        "version": version,
        "embedder": model.name,
        "embedder_fingerprint": model.fingerprint,
        "dims": model.dim,
        "chunking": chunking,
        "counts": {"files": len(manifest_files), "chunks": len(chunks)},
        "files": manifest_files,
        "build": {
            "changed": changed,
            "removed": removed,
            "unchanged": len(manifest_files) - len(changed),
            "embedded": len(missing),
            "embeddings_reused": len(set(keys)) - len(missing),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    partial = out / f".{MANIFEST}.tmp"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, out / MANIFEST)
    return manifest


def _move_into_place(new: Path, target: Path, trash: Path) -> None:
    """Replace target by new (either may be missing; folders are swapped, the old one left in trash)."""
    if target.is_dir():
        target.rename(trash / f"old-{target.name}")
    if new.exists():
        os.replace(new, target)
    elif target.exists():
        target.unlink()


def embedding_text(chunk: Chunk) -> str:
    """What is embedded and BM25-indexed for a chunk: its heading trail, then its text."""
    return f"{chunk.heading}\n{chunk.text}" if chunk.heading else chunk.text


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse rankings (id lists, best first) into (id, score) pairs, best first; ties: first seen first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item_score: -item_score[1])


class LRUCache:
    """A bounded mapping that forgets the least recently used entry, counting hits and misses; thread-safe."""

    def __init__(self, capacity: int = CACHE_SIZE):
        self.capacity = capacity
        self.hits = self.misses = 0
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: Any) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "size": len(self._data),
                "capacity": self.capacity,
            }


class Retriever:
    def __init__(
        self,
        index_dir: Path,
        manifest: dict,
        chunks: list[Chunk],
        embedder: Embedder,
        dense: FaissStore | ChromaStore,
        bm25: Any,
        reranker: Any | None,
        cache_size: int,
    ):
        self.index_dir = index_dir
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.chunks = chunks
        self.embedder = embedder
        self.dense = dense
        self.bm25 = bm25
        self.reranker = reranker
        self.query_cache = LRUCache(cache_size)
        self.result_cache = LRUCache(cache_size)

    @classmethod
    def load(
        cls,
        index_dir: str | Path,
        store: str = "local",
        chroma_url: str | None = None,
        reranker: str | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> Retriever:
        import bm25s

        index_dir = Path(index_dir)
        if store not in STORES:
            raise RagError(f"store {store!r}: expected one of {', '.join(STORES)}")
        if store == "chroma" and not chroma_url:
            raise RagError("the chroma store needs a server url (chroma_url, e.g. http://127.0.0.1:8000)")
        manifest = _read_manifest(index_dir)
        chunks = _read_chunks(index_dir)
        if len(chunks) != manifest["counts"]["chunks"]:
            raise RagError(
                f"{index_dir}: chunks.jsonl has {len(chunks)} chunks, "
                f"the manifest says {manifest['counts']['chunks']}"
            )
        if (index_dir / "embedder").is_dir():
            embedder: Embedder = OfflineEmbedder(index_dir / "embedder", name=manifest["embedder"])
        else:
            embedder = load_embedder(manifest["embedder"])
        if embedder.fingerprint != manifest["embedder_fingerprint"] or embedder.dim != manifest["dims"]:
            raise RagError(f"{index_dir}: embedder {manifest['embedder']!r} changed since indexing: re-index")
        if store == "local":
            dense: FaissStore | ChromaStore = FaissStore(index_dir, len(chunks), embedder.dim)
        else:
            vectors = _read_embedding_vectors(index_dir, len(chunks))
            collection = f"nanochat-{manifest['version']}"
            dense = ChromaStore(chroma_url, collection, [c.id for c in chunks], vectors)
        try:
            bm25 = bm25s.BM25.load(str(index_dir / "bm25"), mmap=True)
        except (OSError, ValueError, KeyError) as e:
            raise RagError(f"{index_dir / 'bm25'}: missing or corrupt ({type(e).__name__})") from None
        rerank = None
        if reranker:
            from nanochat.rag.embedders import CrossEncoderReranker

            rerank = CrossEncoderReranker(reranker)
        return cls(index_dir, manifest, chunks, embedder, dense, bm25, rerank, cache_size)

    @property
    def embedder_name(self) -> str:
        return self.embedder.name

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def search(self, query: str, k: int = 4, mode: str = "hybrid") -> list[Hit]:
        if mode not in MODES:
            raise RagError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if mode == "rerank" and self.reranker is None:
            raise RagError("mode 'rerank' needs a re-ranker: load the index with one (--reranker ID|DIR)")
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise RagError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        if not isinstance(query, str) or not query.strip():
            raise RagError("the query is empty (or not text)")
        key = (self.version, query, k, mode)
        cached = self.result_cache.get(key)
        if cached is not None:
            return list(cached)
        ranked = self._rank(query, k, mode)
        hits = [Hit(self.chunks[row], score, rank) for rank, (row, score) in enumerate(ranked[:k], start=1)]
        self.result_cache.put(key, tuple(hits))
        return hits

    def cache_stats(self) -> dict[str, dict[str, int]]:
        return {"query_embeddings": self.query_cache.stats(), "results": self.result_cache.stats()}

    def _rank(self, query: str, k: int, mode: str) -> list[tuple[int, float]]:
        depth = max(CANDIDATES, k)
        if mode == "bm25":
            return self._bm25(query, k)
        if mode == "dense":
            return self._dense(query, k)
        fused = reciprocal_rank_fusion(
            [[row for row, _ in self._bm25(query, depth)], [row for row, _ in self._dense(query, depth)]]
        )
        if mode == "hybrid":
            return fused
        candidates = [row for row, _ in fused[: max(RERANK_CANDIDATES, k)]]
        scores = self.reranker.scores(query, [embedding_text(self.chunks[row]) for row in candidates])
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])
        return [(candidates[i], float(scores[i])) for i in order]

    def _bm25(self, query: str, n: int) -> list[tuple[int, float]]:
        vocab = self.bm25.vocab_dict
        tokens = [t for t in tokenize(query) if t in vocab]
        if not tokens or not self.chunks:
            return []
        scores = self.bm25.get_scores(tokens)
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n]
        top = sorted(top, key=lambda row: (-scores[row], row))
        return [(int(row), float(scores[row])) for row in top if scores[row] > 0]

    def _dense(self, query: str, n: int) -> list[tuple[int, float]]:
        key = (self.embedder.fingerprint, query)
        vector = self.query_cache.get(key)
        if vector is None:
            vector = self.embedder.embed([query])[0]
            self.query_cache.put(key, vector)
        if not vector.any():  # no known word: no direction to search in
            return []
        return self.dense.search(vector, n)


def _content_key(chunk: Chunk) -> str:
    return hashlib.sha256(embedding_text(chunk).encode()).hexdigest()


def _read_manifest(index_dir: Path) -> dict:
    path = index_dir / MANIFEST
    if not path.is_file():
        raise RagError(f"{index_dir}: no index here (no {MANIFEST}; build one with `nanochat rag index`)")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise RagError(f"{path}: index format {manifest.get('format')!r}, expected {FORMAT}: re-index")
        missing = [
            f
            for f in ("version", "embedder", "embedder_fingerprint", "dims", "counts", "files")
            if f not in manifest
        ]
        if missing:
            raise KeyError(", ".join(missing))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise RagError(f"{path}: corrupt ({type(e).__name__}: {e})") from None
    return manifest


def _read_chunks(index_dir: Path) -> list[Chunk]:
    path = index_dir / "chunks.jsonl"
    try:
        with open(path, encoding="utf-8") as f:
            return [Chunk(**json.loads(line)) for line in f if line.strip()]
    except (OSError, ValueError, TypeError) as e:
        raise RagError(f"{path}: missing or corrupt ({type(e).__name__})") from None


def _read_embedding_cache(index_dir: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(index_dir / "embeddings.npz") as data:
            return dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
    except (OSError, ValueError, KeyError):
        return {}  # a cache: rebuilt when unreadable


def _read_embedding_vectors(index_dir: Path, count: int) -> np.ndarray:
    try:
        with np.load(index_dir / "embeddings.npz") as data:
            vectors = data["vectors"]
    except (OSError, ValueError, KeyError) as e:
        raise RagError(f"{index_dir / 'embeddings.npz'}: missing or corrupt ({type(e).__name__})") from None
    if len(vectors) != count:
        raise RagError(f"{index_dir / 'embeddings.npz'}: {len(vectors)} vectors, the manifest says {count}")
    return vectors
