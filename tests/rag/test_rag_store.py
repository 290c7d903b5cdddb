"""The same retrieval suite against both dense stores: FAISS on disk (memory-mapped) and a real Chroma
server on 127.0.0.1 (skipped with the reason when chromadb is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanochat.rag import RagError
from nanochat.rag.index import Retriever, build_index

pytest.importorskip("bm25s")
pytest.importorskip("faiss")

EXPECTED = {
    "how do I roll back a release?": "Release and rollback > Rolling back",
    "how many blocks, least recently used eviction": "Prefix cache > Sizing",
    "int8 weights and memory": "",
    "the admission queue is full": "Alerts > Queue saturated",
}


@pytest.fixture(params=["local", pytest.param("chroma", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> dict:
    if request.param == "local":
        return {"store": "local"}
    return {"store": "chroma", "chroma_url": request.getfixturevalue("chroma_url")}


@pytest.fixture
def index(corpus: Path, tmp_path: Path) -> Path:
    build_index([corpus], tmp_path / "idx")
    return tmp_path / "idx"


def test_dense_and_hybrid_search_find_the_expected_sections(index: Path, store: dict):
    retriever = Retriever.load(index, **store)
    for query, heading in EXPECTED.items():
        for mode in ("dense", "hybrid"):
            hits = retriever.search(query, k=2, mode=mode)
            assert hits[0].chunk.heading == heading, (query, mode)
            assert [h.rank for h in hits] == [1, 2]


def test_the_dense_scores_are_cosine_similarities_of_the_query_and_chunk_vectors(index: Path, store: dict):
    retriever = Retriever.load(index, **store)
    query = "roll back to the previous revision"
    hits = retriever.search(query, k=len(retriever.chunks), mode="dense")
    assert sorted(h.chunk.id for h in hits) == sorted(c.id for c in retriever.chunks)
    q = retriever.embed([query])[0]
    from nanochat.rag.index import embedding_text

    for hit in hits:
        expected = float(q @ retriever.embed([embedding_text(hit.chunk)])[0])
        assert hit.score == pytest.approx(expected, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_two_retrievers_share_one_index_and_a_rebuilt_index_is_a_new_version(
    index: Path, store: dict, corpus: Path
):
    first, second = Retriever.load(index, **store), Retriever.load(index, **store)
    assert first.search("prefix cache", mode="dense") == second.search("prefix cache", mode="dense")
    (corpus / "guide" / "new.md").write_text("# Tokenizer\n\nThe tokenizer splits text into BPE tokens.\n")
    build_index([corpus], index)
    rebuilt = Retriever.load(index, **store)
    assert rebuilt.version != first.version
    assert len(rebuilt.chunks) == len(first.chunks) + 1
    hits = rebuilt.search("BPE tokenizer", k=1, mode="dense")
    assert hits[0].chunk.heading == "Tokenizer"


def test_the_local_store_is_memory_mapped(index: Path):
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("no /proc/self/maps to check the mapping in")
    path = str((index / "dense.faiss").resolve())
    assert path not in maps.read_text()
    retriever = Retriever.load(index)
    assert path in maps.read_text()  # the vectors are the file's pages, shared between processes
    assert retriever.search("roll back a release", k=1, mode="dense")


def test_a_chroma_server_that_is_not_there_is_a_one_line_error(index: Path):
    pytest.importorskip("chromadb")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RagError, match=f"chroma server http://127.0.0.1:{port}") as error:
        Retriever.load(index, store="chroma", chroma_url=f"http://127.0.0.1:{port}")
    assert "\n" not in str(error.value)
    with pytest.raises(RagError, match="needs a server url"):
        Retriever.load(index, store="chroma")
    with pytest.raises(RagError, match="store 'redis'"):
        Retriever.load(index, store="redis")


@pytest.mark.integration
def test_the_chroma_server_ranks_as_faiss_does(index: Path, chroma_url: str):
    local = Retriever.load(index)
    shared = Retriever.load(index, store="chroma", chroma_url=chroma_url)
    for query in [*EXPECTED, "canary traffic promotion", "runbook for every alert"]:
        a, b = local.search(query, k=3, mode="dense"), shared.search(query, k=3, mode="dense")
        assert [h.chunk.id for h in a] == [h.chunk.id for h in b], query
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
