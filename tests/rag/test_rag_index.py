"""The index folder: build, incremental re-index by content hash, manifest, search modes, fusion, caches,
bad input and broken indexes, and the `nanochat rag` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nanochat.cli import main
from nanochat.rag import Hit, RagError
from nanochat.rag.index import MODES, Retriever, build_index, reciprocal_rank_fusion

pytest.importorskip("bm25s")
pytest.importorskip("faiss")


def test_the_manifest_records_files_hashes_embedder_dims_and_counts(corpus: Path, tmp_path: Path):
    manifest = build_index([corpus], tmp_path / "idx")
    assert manifest["embedder"] == "offline" and manifest["dims"] == 192
    assert sorted(manifest["files"]) == [
        "docs/guide/cache.md",
        "docs/guide/release.md",
        "docs/notes/quantization.txt",
        "docs/web/alerts.html",
    ]
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert manifest["counts"] == {"files": 4, "chunks": sum(f["chunks"] for f in manifest["files"].values())}
    assert manifest["build"]["embedded"] == manifest["counts"]["chunks"]
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text()) == manifest
    assert (tmp_path / "idx" / "embedder" / "weights.npz").is_file()  # self-contained


def test_reindex_touches_only_changed_files_and_drops_deleted_ones(corpus: Path, tmp_path: Path):
    out = tmp_path / "idx"
    first = build_index([corpus], out)
    again = build_index([corpus], out)
    assert again["build"] == {
        "changed": [],
        "removed": [],
        "unchanged": 4,
        "embedded": 0,
        "embeddings_reused": first["counts"]["chunks"],
    }
    assert again["version"] == first["version"]

    release = corpus / "guide" / "release.md"
    release.write_text(release.read_text() + "\n## Freeze\n\nNo releases on Fridays.\n")
    (corpus / "notes" / "quantization.txt").unlink()
    changed = build_index([corpus], out)
    assert changed["build"]["changed"] == ["docs/guide/release.md"]
    assert changed["build"]["removed"] == ["docs/notes/quantization.txt"]
    assert changed["build"]["unchanged"] == 2
    assert changed["build"]["embedded"] == 1  # the new section only: the others' text is unchanged
    assert changed["version"] != first["version"]
    retriever = Retriever.load(out)
    assert {c.source for c in retriever.chunks} == set(changed["files"])
    assert retriever.search("releases on Fridays", k=1, mode="bm25")[0].chunk.heading.endswith("Freeze")


def test_a_same_length_edit_is_a_new_version_and_a_broken_index_is_rebuilt(corpus: Path, tmp_path: Path):
    out = tmp_path / "idx"
    first = build_index([corpus], out)
    cache = corpus / "guide" / "cache.md"
    cache.write_text(cache.read_text().replace("least recently used", "least recently added"))
    edited = build_index([corpus], out)
    assert edited["build"]["changed"] == ["docs/guide/cache.md"] and edited["build"]["embedded"] == 1
    assert edited["version"] != first["version"]  # same spans and ids, other text: other vectors
    (out / "manifest.json").write_text("{broken")
    rebuilt = build_index([corpus], out)
    assert rebuilt["build"]["changed"] == sorted(rebuilt["files"]) and rebuilt["version"] == edited["version"]
    assert Retriever.load(out).search("least recently added", k=1)[0].chunk.source == "docs/guide/cache.md"


def test_the_offline_index_finds_the_rollback_section_in_every_mode(corpus: Path, tmp_path: Path):
    build_index([corpus], tmp_path / "idx")
    retriever = Retriever.load(tmp_path / "idx")
    for mode in ("bm25", "dense", "hybrid"):
        hits = retriever.search("how do I roll back a release?", k=3, mode=mode)
        assert all(isinstance(h, Hit) for h in hits)
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert hits[0].chunk.heading == "Release and rollback > Rolling back", mode
        assert hits == sorted(hits, key=lambda h: -h.score)
    assert retriever.embedder_name == "offline"
    vectors = retriever.embed(["roll back", "prefix cache"])
    assert vectors.shape == (2, 192) and str(vectors.dtype) == "float32"


def test_reciprocal_rank_fusion_ranks_first_what_both_rank_second():
    bm25 = ["keyword-only", "both", "x"]
    dense = ["meaning-only", "both", "z"]
    ids = {name: i for i, name in enumerate(dict.fromkeys(bm25 + dense))}
    fused = reciprocal_rank_fusion([[ids[n] for n in bm25], [ids[n] for n in dense]], k=60)
    assert fused[0] == (ids["both"], pytest.approx(2 / 62))
    assert fused[0][0] != ids[bm25[0]] and fused[0][0] != ids[dense[0]]  # fusion beats each ranking's top
    assert [i for i, _ in fused[1:3]] == [ids["keyword-only"], ids["meaning-only"]]
    assert reciprocal_rank_fusion([]) == []


def _concept_embedder(folder: Path) -> Path:
    """An offline-embedder folder written by hand: giraffe and okapi mean the same, lion and hippo are
    other directions, and every other word (zebra) is unknown to it: BM25 alone sees those."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"dim": 3, "fingerprint": "test-concepts"}))
    (folder / "vocab.json").write_text(json.dumps({"giraffe": 0, "okapi": 1, "lion": 2, "hippo": 3}))
    components = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float16)
    np.savez(folder / "weights.npz", idf=np.ones(4, dtype=np.float16), components=components)
    return folder


def test_hybrid_finds_what_bm25_and_dense_each_rank_second(tmp_path: Path):
    sections = {
        "Keyword": "zebra zebra zebra",  # BM25's first (the rare word, often), no meaning for dense
        "Meaning": "okapi okapi",  # dense's first (a synonym), no query word for BM25
        "Answer": "giraffe lion",  # second in both
        "Near": "okapi lion lion",  # dense's third and fourth, unknown to BM25
        "Nearer": "okapi hippo hippo",
    }
    (tmp_path / "zoo.md").write_text("".join(f"# {h}\n\n{t}\n\n" for h, t in sections.items()))
    build_index([tmp_path / "zoo.md"], tmp_path / "idx", embedder=str(_concept_embedder(tmp_path / "emb")))
    retriever = Retriever.load(tmp_path / "idx")
    top = {
        mode: [h.chunk.heading for h in retriever.search("zebra giraffe", k=5, mode=mode)]
        for mode in MODES[:3]
    }
    assert top["bm25"][:2] == ["Keyword", "Answer"]
    assert top["dense"][:2] == ["Meaning", "Answer"] and top["dense"].index("Keyword") >= 3
    assert top["hybrid"][0] == "Answer"  # 2/62 beats 1/61 + 1/64 and 1/61


def test_results_and_query_embeddings_are_cached_by_version_query_k_and_mode(corpus: Path, tmp_path: Path):
    build_index([corpus], tmp_path / "idx")
    retriever = Retriever.load(tmp_path / "idx", cache_size=2)
    assert retriever.cache_stats() == {
        "query_embeddings": {"hits": 0, "misses": 0, "size": 0, "capacity": 2},
        "results": {"hits": 0, "misses": 0, "size": 0, "capacity": 2},
    }
    first = retriever.search("prefix cache sizing", k=2)
    assert retriever.search("prefix cache sizing", k=2) == first
    stats = retriever.cache_stats()
    assert stats["results"]["hits"] == 1 and stats["results"]["misses"] == 1
    assert stats["query_embeddings"] == {"hits": 0, "misses": 1, "size": 1, "capacity": 2}
    retriever.search("prefix cache sizing", k=3)  # another key: a result miss, an embedding hit
    retriever.search("prefix cache sizing", k=3, mode="dense")
    stats = retriever.cache_stats()
    assert stats["results"] == {"hits": 1, "misses": 3, "size": 2, "capacity": 2}  # bounded: LRU
    assert stats["query_embeddings"]["hits"] == 2
    retriever.search("prefix cache sizing", k=2)  # evicted: computed again
    assert retriever.cache_stats()["results"]["misses"] == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query": "x", "mode": "fuzzy"}, "mode 'fuzzy'"),
        ({"query": "x", "mode": "rerank"}, "re-ranker"),
        ({"query": "x", "k": 0}, "k must be"),
        ({"query": "x", "k": 1000}, "k must be"),
        ({"query": "   "}, "empty"),
    ],
)
def test_bad_searches_are_rag_errors(corpus: Path, tmp_path: Path, kwargs: dict, message: str):
    build_index([corpus], tmp_path / "idx")
    with pytest.raises(RagError, match=message):
        Retriever.load(tmp_path / "idx").search(**kwargs)


def test_a_query_with_no_known_word_finds_nothing_in_every_mode(corpus: Path, tmp_path: Path):
    build_index([corpus], tmp_path / "idx")
    retriever = Retriever.load(tmp_path / "idx")
    assert all(retriever.search("qwxyzzy", mode=mode) == [] for mode in ("bm25", "dense", "hybrid"))
    assert set(MODES) == {"bm25", "dense", "hybrid", "rerank"}


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "manifest.json").unlink(), "no index here"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json: corrupt"),
        (lambda d: (d / "manifest.json").write_text('{"format": 1}'), "corrupt.*version"),
        (lambda d: (d / "chunks.jsonl").write_text('{"id": 1}\n'), "chunks.jsonl: missing or corrupt"),
        (lambda d: (d / "dense.faiss").write_bytes(b"garbage"), "dense.faiss: missing or corrupt"),
        (lambda d: (d / "embedder" / "weights.npz").write_bytes(b"garbage"), "embedder.*corrupt"),
        (lambda d: [p.unlink() for p in (d / "bm25").iterdir()], "bm25: missing or corrupt"),
    ],
)
def test_a_missing_or_corrupt_index_is_one_line(corpus: Path, tmp_path: Path, breakage, message: str):
    build_index([corpus], tmp_path / "idx")
    breakage(tmp_path / "idx")
    with pytest.raises(RagError, match=message) as error:
        Retriever.load(tmp_path / "idx")
    assert "\n" not in str(error.value)


def test_the_cli_indexes_searches_and_reports_errors_in_one_line(corpus: Path, tmp_path: Path, capsys):
    assert main(["rag", "index", "docs", "--out", "idx"]) == 0
    assert "4 files" in capsys.readouterr().out
    assert main(["rag", "search", "roll back a release", "--index", "idx", "-k", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and rows[0]["source"] == "docs/guide/release.md" and rows[0]["rank"] == 1
    text = (corpus / "guide" / "release.md").read_text()
    assert text[rows[0]["start"] : rows[0]["end"]] == rows[0]["text"]
    assert main(["rag", "search", "roll back", "--index", "idx"]) == 0
    assert "[1]" in capsys.readouterr().out
    assert main(["rag", "search", "x", "--index", "nowhere"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nanochat: error: nowhere: no index here") and err.count("\n") == 1
    assert main(["rag", "index", "missing.md", "--out", "idx"]) == 1
    assert "missing.md: no such file" in capsys.readouterr().err
