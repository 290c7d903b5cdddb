"""Where the chunk vectors live and how the nearest ones are found: both answer `search(vector, n)` with
(row, cosine similarity) pairs, rows being positions in the index's chunk list.

- `FaissStore` (the default, no server): an exact inner-product index (vectors are L2-normalised, so inner
  product is cosine) written to `dense.faiss` in the index folder and read back memory-mapped
  (faiss.IO_FLAG_MMAP_IFC): several processes on one machine share the pages. A re-index replaces the
  file (a new inode), so a process still mapping the old one keeps reading consistent pages.
- `ChromaStore` (server mode): a collection on a Chroma server (`chroma run --path DIR --host H --port P`)
  through chromadb's HttpClient, for several service instances on several machines sharing one index. The
  collection is named after the index version, so a rebuilt index never mixes with an old one; the first
  instance to load an index uploads its vectors (upserts are idempotent, so concurrent loads are safe).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from nanochat.rag import RagError

FAISS_FILE = "dense.faiss"

STORES = ("local", "chroma")
_CHROMA_BATCH = 1000


def write_faiss(vectors: np.ndarray, index_dir: Path) -> None:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, str(index_dir / FAISS_FILE))


class FaissStore:
    def __init__(self, index_dir: Path, count: int, dim: int):
        import faiss

        path = index_dir / FAISS_FILE
        try:
            # IO_FLAG_MMAP maps inverted lists; a flat index's vectors need IO_FLAG_MMAP_IFC (faiss >= 1.10)
            flags = faiss.IO_FLAG_MMAP | getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
            self.index = faiss.read_index(str(path), flags)
        except RuntimeError as e:
            raise RagError(f"{path}: missing or corrupt ({str(e).strip().splitlines()[-1]})") from None
        if self.index.ntotal != count or self.index.d != dim:
            raise RagError(
                f"{path}: {self.index.ntotal} vectors of {self.index.d} dims, expected {count} of {dim}"
            )

    def search(self, vector: np.ndarray, n: int) -> list[tuple[int, float]]:
        n = min(n, self.index.ntotal)
        if n == 0:
            return []
        scores, rows = self.index.search(vector.reshape(1, -1).astype(np.float32), n)
        return [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]


class ChromaStore:
    def __init__(self, url: str, collection: str, ids: list[str], vectors: np.ndarray):
        try:
            import chromadb
        except ModuleNotFoundError:
            raise RagError(
                "the chroma store needs chromadb: pip install 'nanochat-service[rag-server]'"
            ) from None
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if not parsed.hostname:
            raise RagError(f"chroma url {url!r}: expected http://HOST:PORT")
        try:
            client = chromadb.HttpClient(
                host=parsed.hostname, port=parsed.port or 8000, ssl=parsed.scheme == "https"
            )
            self.collection = client.get_or_create_collection(collection, metadata={"hnsw:space": "cosine"})
            if self.collection.count() != len(ids):
                for i in range(0, len(ids), _CHROMA_BATCH):
                    self.collection.upsert(
                        ids=ids[i : i + _CHROMA_BATCH], embeddings=vectors[i : i + _CHROMA_BATCH].tolist()
                    )
        except Exception as e:  # connection refused, HTTP errors: chromadb raises many kinds
            raise RagError(f"chroma server {url}: {type(e).__name__}: {str(e).strip()[:200]}") from None
        self.rows = {chunk_id: row for row, chunk_id in enumerate(ids)}

    def search(self, vector: np.ndarray, n: int) -> list[tuple[int, float]]:
        n = min(n, len(self.rows))
        if n == 0:
            return []
        result = self.collection.query(
            query_embeddings=[vector.astype(np.float32).tolist()], n_results=n, include=["distances"]
        )
        return [
            (self.rows[chunk_id], 1.0 - float(distance))
            for chunk_id, distance in zip(result["ids"][0], result["distances"][0], strict=True)
            if chunk_id in self.rows
        ]
