"""Embedders: the committed offline LSA embedder (loads, retrains deterministically), any
sentence-transformers model from a local folder (a tiny random BERT saved by the library, no hub), and
the CrossEncoder re-ranker."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from nanochat.cli import main
from nanochat.rag import RagError
from nanochat.rag.embedders import OFFLINE_DIR, OfflineEmbedder, load_embedder, train_offline_embedder
from nanochat.rag.index import Retriever, build_index

pytest.importorskip("bm25s")
pytest.importorskip("faiss")


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a folder must never be looked up on the hub


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_the_committed_offline_embedder_loads_small_and_normalised():
    size = sum(p.stat().st_size for p in OFFLINE_DIR.iterdir())
    assert size < 5_000_000
    embedder = load_embedder("offline")
    assert isinstance(embedder, OfflineEmbedder) and embedder.dim == 192
    vectors = embedder.embed(["how do I roll back a release?", "prefix caching", "qwxyzzy"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 192)
    assert np.linalg.norm(vectors[:2], axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert not vectors[2].any()  # no known word: the zero vector
    related = embedder.embed(["roll back to the previous revision", "int8 weight quantization"])
    assert float(vectors[0] @ related[0]) > float(vectors[0] @ related[1])


def test_retraining_the_offline_embedder_is_deterministic(corpus: Path, tmp_path: Path):
    for folder in ("a", "b"):
        train_offline_embedder([corpus], tmp_path / folder, dim=4, min_df=1)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    trained = load_embedder(str(tmp_path / "a"))
    assert trained.dim == 4 and trained.name == str(tmp_path / "a")
    assert trained.fingerprint != load_embedder("offline").fingerprint
    with pytest.raises(RagError, match="too few"):
        train_offline_embedder([corpus], tmp_path / "c", dim=500)


def test_the_train_embedder_command_writes_a_folder_an_index_can_use(corpus: Path, tmp_path: Path, capsys):
    assert main(["rag", "train-embedder", "docs", "--out", "emb", "--dim", "8"]) == 1  # min_df 2: too few
    assert "too few" in capsys.readouterr().err
    (corpus / "more.md").write_text(
        "\n\n".join(f"# H{i}\n\nrelease cache alert queue {i}" for i in range(20))
    )
    assert main(["rag", "train-embedder", "docs", "--out", "emb", "--dim", "8"]) == 0
    assert "8 dims" in capsys.readouterr().out
    manifest = build_index([corpus], tmp_path / "idx", embedder="emb")
    assert manifest["dims"] == 8 and manifest["embedder"] == "emb"
    assert Retriever.load(tmp_path / "idx").embed(["release"]).shape == (1, 8)


def test_a_sentence_transformers_folder_embeds_indexes_and_searches(
    corpus: Path, tmp_path: Path, tiny_sentence_transformer: Path
):
    embedder = load_embedder(str(tiny_sentence_transformer))
    assert embedder.dim == 32
    vectors = embedder.embed(["roll back", "prefix cache", "roll back"])
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert np.allclose(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)

    manifest = build_index([corpus], tmp_path / "idx", embedder=str(tiny_sentence_transformer))
    assert manifest["dims"] == 32 and manifest["embedder"] == str(tiny_sentence_transformer)
    assert not (tmp_path / "idx" / "embedder").exists()  # loaded from where it is, by name
    retriever = Retriever.load(tmp_path / "idx")
    assert retriever.embedder_name == str(tiny_sentence_transformer)
    hits = retriever.search("roll back a release", k=3, mode="dense")
    assert len(hits) == 3 and [h.rank for h in hits] == [1, 2, 3]
    # the embedding cache: an unchanged corpus embeds nothing again, a new embedder everything
    assert (
        build_index([corpus], tmp_path / "idx", embedder=str(tiny_sentence_transformer))["build"]["embedded"]
        == 0
    )
    assert build_index([corpus], tmp_path / "idx")["build"]["embedded"] == manifest["counts"]["chunks"]


def test_the_cross_encoder_reranks_hybrid_candidates(corpus: Path, tmp_path: Path, tiny_cross_encoder: Path):
    build_index([corpus], tmp_path / "idx")
    retriever = Retriever.load(tmp_path / "idx", reranker=str(tiny_cross_encoder))
    hits = retriever.search("roll back a release", k=3, mode="rerank")
    assert [h.rank for h in hits] == [1, 2, 3]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    candidates = {h.chunk.id for h in retriever.search("roll back a release", k=20, mode="hybrid")}
    assert {h.chunk.id for h in hits} <= candidates
    from nanochat.rag.index import embedding_text

    expected = retriever.reranker.scores("roll back a release", [embedding_text(hits[0].chunk)])[0]
    assert hits[0].score == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("spec", ["no/such/model-folder", "."])
def test_an_unknown_embedder_or_reranker_is_one_line(spec: str, tmp_path: Path, corpus: Path):
    with pytest.raises(RagError) as error:
        load_embedder(spec)
    assert "\n" not in str(error.value) and spec in str(error.value)
    build_index([corpus], tmp_path / "idx")
    with pytest.raises(RagError, match="re-ranker") as error:
        Retriever.load(tmp_path / "idx", reranker=spec)
    assert "\n" not in str(error.value)
