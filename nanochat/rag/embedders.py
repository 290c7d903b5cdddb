"""Text into vectors: the offline LSA embedder this project trains itself, or any sentence-transformers model.

- `OfflineEmbedder` ("offline"): latent semantic analysis. Sublinear TF-IDF over words and word pairs,
  projected by a truncated SVD fitted on the corpus' paragraphs (headings prepended), L2-normalised. It is
  trained by `train_offline_embedder` (`nanochat rag train-embedder`) in about a second from README.md and
  docs/, deterministic (a fixed seed), and saved as plain arrays (vocab.json + weights.npz, float16) in a
  folder: models/rag/embedder/ is the committed one. Embedding needs only numpy; training needs scikit-learn.
- `SentenceTransformerEmbedder`: any sentence-transformers model by hub id or local folder (a MiniLM-class
  model such as sentence-transformers/all-MiniLM-L6-v2 for real deployments), batched, normalised.
- `CrossEncoderReranker`: a sentence-transformers CrossEncoder by id or folder, for the "rerank" mode.

`tokenize` is shared with BM25 (index.py), so both see the same words.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from nanochat.rag import RagError

OFFLINE = "offline"
REPO_ROOT = Path(__file__).resolve().parents[2]
OFFLINE_DIR = REPO_ROOT / "models" / "rag" / "embedder"
TRAINING_PATHS = ("README.md", "docs")  # the offline embedder's corpus, relative to the repository
OFFLINE_DIM = 192
OFFLINE_MIN_DF = 2
OFFLINE_SEED = 0
BATCH_SIZE = 64
_WORD = re.compile(r"[a-z0-9][a-z0-9_]*(?:[.\-/][a-z0-9_]+)*")
_STOPWORD_LIST = """a an and are as at be but by can do does for from has have how i if in into is it
its of on or so that the their then there these this to was we what when where which while who why will with
you your"""
_STOPWORDS = frozenset(_STOPWORD_LIST.split())


def tokenize(text: str) -> list[str]:
    """Lowercase words (identifiers with dots, dashes, slashes kept whole, and their parts), no stop words."""
    words = []
    for match in _WORD.finditer(text.lower()):
        word = match.group()
        parts = re.split(r"[.\-/_]", word)
        for w in (word, *parts) if len(parts) > 1 else (word,):
            if w and w not in _STOPWORDS and (len(w) > 1 or w.isdigit()):
                words.append(w)
    return words


def _terms(text: str) -> list[str]:
    """The offline embedder's features: words and adjacent word pairs."""
    words = tokenize(text)
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


class Embedder(Protocol):
    name: str  # what the manifest records: "offline", a hub id or a folder
    fingerprint: str  # changes when the vectors would (the disk cache's key)
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class OfflineEmbedder:
    def __init__(self, folder: Path, name: str = OFFLINE):
        try:
            config = json.loads((folder / "config.json").read_text())
            vocab = json.loads((folder / "vocab.json").read_text())
            with np.load(folder / "weights.npz") as weights:
                self.idf = weights["idf"].astype(np.float32)
                self.components = weights["components"].astype(np.float32)  # (vocab, dim)
        except (OSError, ValueError, KeyError) as e:
            raise RagError(f"offline embedder {folder}: missing or corrupt ({e})") from None
        self.vocab: dict[str, int] = vocab
        self.name = name
        self.dim = int(config["dim"])
        self.fingerprint = config["fingerprint"]
        if self.components.shape != (len(vocab), self.dim) or self.idf.shape != (len(vocab),):
            raise RagError(f"offline embedder {folder}: weights do not match its vocabulary")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            counts = Counter(t for t in _terms(text) if t in self.vocab)
            if not counts:
                continue
            ids = np.fromiter((self.vocab[t] for t in counts), dtype=np.int64, count=len(counts))
            tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))
            weights = tf * self.idf[ids]
            weights /= np.linalg.norm(weights)
            out[i] = weights @ self.components[ids]
        return _normalize(out)


def train_offline_embedder(
    paths: Sequence[Path], out_dir: Path, dim: int = OFFLINE_DIM, min_df: int = OFFLINE_MIN_DF
) -> dict:
    """Fit the LSA embedder on the paragraphs of the given files (folders: their .md/.txt/.html files)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    from nanochat.rag.chunking import chunk_source
    from nanochat.rag.index import expand_paths

    documents = []
    for path, source in expand_paths(paths):
        for chunk in chunk_source(path, source, max_chars=400, overlap=0):
            documents.append(f"{chunk.heading}\n{chunk.text}")
    if len(documents) <= dim:
        raise RagError(f"train-embedder: {len(documents)} paragraphs is too few for {dim} dimensions")
    vectorizer = TfidfVectorizer(analyzer=_terms, min_df=min_df, sublinear_tf=True, dtype=np.float32)
    matrix = vectorizer.fit_transform(documents)
    svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=7, random_state=OFFLINE_SEED)
    svd.fit(matrix)
    vocab = {term: int(i) for term, i in sorted(vectorizer.vocabulary_.items(), key=lambda kv: kv[1])}
    idf = vectorizer.idf_.astype(np.float16)
    components = svd.components_.T.astype(np.float16)  # (vocab, dim)
    fingerprint = hashlib.sha256(
        idf.tobytes() + components.tobytes() + json.dumps(vocab).encode()
    ).hexdigest()
    config = {
        "kind": "lsa",
        "dim": dim,
        "min_df": min_df,
        "paragraphs": len(documents),
        "vocabulary": len(vocab),
        "explained_variance": round(float(svd.explained_variance_ratio_.sum()), 4),
        "fingerprint": f"lsa-{fingerprint[:16]}",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")))
    with open(out_dir / "weights.npz", "wb") as f:
        np.savez_compressed(f, idf=idf, components=components)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def _sentence_transformers():
    """The sentence-transformers module, or a one-line RagError naming the extra that installs it."""
    try:
        import sentence_transformers
    except ModuleNotFoundError:
        raise RagError(
            "sentence-transformers models need the rag-models extra: "
            "pip install 'nanochat-service[rag-models]'"
        ) from None
    return sentence_transformers


class SentenceTransformerEmbedder:
    def __init__(self, model: str, batch_size: int = BATCH_SIZE):
        SentenceTransformer = _sentence_transformers().SentenceTransformer

        try:
            self.model = SentenceTransformer(model, device="cpu")
        except (
            Exception
        ) as e:  # the library raises OSError, ValueError, HTTP errors... for a bad id or folder
            raise RagError(
                f"embedder {model!r}: cannot load ({type(e).__name__}: {_first_line(e)})"
            ) from None
        self.name = model
        self.batch_size = batch_size
        # renamed in sentence-transformers 5.x; the old name still works there, with a warning
        dimension = getattr(self.model, "get_embedding_dimension", None)
        self.dim = int((dimension or self.model.get_sentence_embedding_dimension)())
        self.fingerprint = f"st-{hashlib.sha256(_model_identity(model).encode()).hexdigest()[:16]}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return _normalize(np.asarray(vectors, dtype=np.float32))


class CrossEncoderReranker:
    def __init__(self, model: str):
        CrossEncoder = _sentence_transformers().CrossEncoder

        try:
            self.model = CrossEncoder(model, device="cpu")
        except Exception as e:
            raise RagError(
                f"re-ranker {model!r}: cannot load ({type(e).__name__}: {_first_line(e)})"
            ) from None
        self.name = model

    def scores(self, query: str, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.float32)
        pairs = [(query, t) for t in texts]
        return np.asarray(self.model.predict(pairs, show_progress_bar=False), dtype=np.float32).reshape(-1)


def load_embedder(spec: str, offline_dir: Path = OFFLINE_DIR) -> Embedder:
    """'offline' (the LSA embedder in offline_dir), a folder holding one, or a sentence-transformers model."""
    if spec == OFFLINE:
        return OfflineEmbedder(offline_dir)
    folder = Path(spec)
    if (folder / "weights.npz").is_file() and (folder / "vocab.json").is_file():
        return OfflineEmbedder(folder, name=spec)
    if folder.exists() and not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise RagError(
            f"embedder {spec!r}: a folder with neither an offline embedder nor a sentence-transformers model"
        )
    return SentenceTransformerEmbedder(spec)


def _model_identity(model: str) -> str:
    """A folder's files (names and sizes) or the hub id: what changes when the model does."""
    folder = Path(model)
    if not folder.is_dir():
        return model
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return model + "".join(f"|{p.relative_to(folder)}:{p.stat().st_size}" for p in files)


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]
