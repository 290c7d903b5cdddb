"""Fixtures of the retrieval tests: a small corpus, tiny local sentence-transformers models (random BERT
weights written here, no hub), and a real Chroma server on a free 127.0.0.1 port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CORPUS = {
    "guide/release.md": """# Release and rollback

Deploys go out through the release pipeline.

## Rolling back

To roll back a release, shift traffic to the previous revision with
`gcloud run services update-traffic`. Check the error rate afterwards.

## Canary

A canary receives five percent of traffic for ten minutes before promotion.
""",
    "guide/cache.md": """# Prefix cache

The prefix cache keeps the KV blocks of shared prompt prefixes.

## Sizing

Set NANOCHAT_PREFIX_CACHE_SIZE to the number of blocks; eviction is least recently used.
""",
    "notes/quantization.txt": """Quantization stores weights in int8.

It halves memory at a small cost in accuracy. Calibrate on a few hundred prompts.
""",
    "web/alerts.html": """<html><head><title>x</title><style>p {color: red}</style></head><body>
<h1>Alerts</h1><p>Every alert has a runbook.</p>
<h2>Queue saturated</h2><p>The admission queue is full: scale out or lower the
request rate.</p><script>var ignored = "rollback";</script>
</body></html>
""",
}


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CORPUS files under tmp_path/docs; the working folder is tmp_path (sources are docs/...)."""
    for name, text in CORPUS.items():
        path = tmp_path / "docs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "docs"


def _tiny_bert(folder: Path, num_labels: int | None = None) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [
        "roll",
        "back",
        "release",
        "revision",
        "traffic",
        "cache",
        "prefix",
        "blocks",
        "alert",
        "queue",
        "quantization",
        "int8",
    ]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    if num_labels is None:
        model = BertModel(config)
    else:
        config.num_labels = num_labels
        model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sentence_transformer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers folder (random 32-dim BERT + mean pooling) saved by the library itself."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 5.x; `models` before
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    root = tmp_path_factory.mktemp("st")
    bert = _tiny_bert(root / "bert")
    model = SentenceTransformer(
        modules=[Transformer(str(bert), max_seq_length=256), Pooling(32, "mean")], device="cpu"
    )
    model.save(str(root / "model"))
    return root / "model"


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CrossEncoder folder: a random BERT with one output (the relevance logit)."""
    pytest.importorskip("sentence_transformers")
    return _tiny_bert(tmp_path_factory.mktemp("ce") / "model", num_labels=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Chroma server (`chroma run`, from the chromadb package) on a free port; stopped after."""
    pytest.importorskip("chromadb", reason="the chroma store needs chromadb (the rag extra)")
    import httpx

    chroma = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if chroma is None:
        pytest.skip("no `chroma` command (the chromadb package installs it)")
    root = tmp_path_factory.mktemp("chroma")
    port = _free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 (closed after the server stops)
    process = subprocess.Popen(
        [chroma, "run", "--path", str(root / "data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # bounds a hang only: two shared cores
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"chroma exited {process.returncode}: {(root / 'server.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"chroma did not answer: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
