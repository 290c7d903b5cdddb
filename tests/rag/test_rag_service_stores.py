"""The service's retrieval over both stores and with a re-ranker (docs/rag.md): two `python -m app` servers on
one index, one on its FAISS file, one on a real Chroma server (tests/rag/conftest.py), answer
`POST /v1/retrieve` alike; with NANOCHAT_RAG_RERANKER mode `rerank` works, and `nanochat rag eval
--reranker` scores it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from nanochat.rag.index import build_index

if TYPE_CHECKING:
    from tests.servers import Server

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
QUERIES = ("How do I roll back a release?", "What does the queue saturation alert measure?", "prefix caching")


@pytest.fixture(scope="module")
def runbooks_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = tmp_path_factory.mktemp("runbooks") / "index"
    build_index([REPO_ROOT / "docs" / "runbooks", REPO_ROOT / "docs" / "serving.md"], index)
    return index


def serve(start_server: Callable[..., Server], index: Path, **env: str) -> str:
    from tests.servers import wait_for_part

    url = start_server({"NANOCHAT_RAG_INDEXES": f"docs={index}", **env}).url
    status = wait_for_part(url, "rag")
    assert status["state"] == "ready", status
    return url


def results(url: str, query: str, mode: str = "hybrid") -> list[tuple[str, int, int]]:
    response = httpx.post(f"{url}/v1/retrieve", json={"query": query, "k": 4, "mode": mode}, timeout=60)
    assert response.status_code == 200, response.text
    return [(c["source"], c["start"], c["end"]) for c in response.json()["data"]]


def test_faiss_and_chroma_serve_the_same_chunks(
    start_server: Callable[..., Server], runbooks_index: Path, chroma_url: str
) -> None:
    local = serve(start_server, runbooks_index)
    shared = serve(
        start_server, runbooks_index, NANOCHAT_RAG_STORE="chroma", NANOCHAT_RAG_CHROMA_URL=chroma_url
    )
    for query in QUERIES:
        for mode in ("dense", "hybrid"):
            assert results(local, query, mode) == results(shared, query, mode), (query, mode)
    assert results(local, QUERIES[0])[0][0].endswith("runbooks/release.md")


def test_rerank_when_a_reranker_is_configured(
    start_server: Callable[..., Server], runbooks_index: Path, tiny_cross_encoder: Path
) -> None:
    url = serve(start_server, runbooks_index, NANOCHAT_RAG_RERANKER=str(tiny_cross_encoder))
    reranked = results(url, QUERIES[0], "rerank")
    assert len(reranked) == 4
    response = httpx.post(f"{url}/v1/retrieve", json={"query": QUERIES[0], "mode": "rerank"}, timeout=60)
    assert response.json()["mode"] == "rerank"


def test_eval_scores_rerank_with_a_reranker(
    runbooks_index: Path, tiny_cross_encoder: Path, tmp_path: Path
) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"id": "r", "question": QUERIES[0], "sources": ["docs/runbooks/release.md"]}) + "\n"
    )
    figures = tmp_path / "eval.json"
    command = [sys.executable, "-m", "nanochat", "rag", "eval", "--index", str(runbooks_index)]
    command += ["--questions", str(questions), "--reranker", str(tiny_cross_encoder)]
    command += ["--out", str(tmp_path / "eval.md"), "--json", str(figures)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    modes = [m["mode"] for m in json.loads(figures.read_text())["modes"]]
    assert modes == ["bm25", "dense", "hybrid", "rerank"]
    assert "| rerank |" in (tmp_path / "eval.md").read_text()
