"""Retrieval routes (docs/rag.md): `POST /v1/retrieve`, `POST /v1/embeddings`, and what a chat request with
`retrieval` gets before it is generated (`with_retrieval`: its sources in the prompt, its citations).

`POST /v1/retrieve` `{"query", "k"?, "index"?, "mode"?}` -> the k best chunks of the index, each with its
source file, heading trail, character span, score and text. `POST /v1/embeddings` is OpenAI's (the official
client's `embeddings.create`): `input` a text or a list of texts, `model` an index name or its embedder's
(default: the first index), `encoding_format` float or base64, `usage` in words and punctuation marks.

Errors, in the one shape: no index configured 404 `retrieval_disabled`; an unknown index 404
`index_not_found` (an unknown embeddings `model` 404 `model_not_found`); an empty or oversized query, k out
of range, a mode the index cannot do (rerank without a re-ranker), too many or too long inputs 400 naming
the field; an index still loading 503 `loading` with Retry-After, one that failed 503 `load_failed`; more
than NANOCHAT_RAG_QUEUE searches waiting 429 `queue_full`. The service (app/rag_service.py) does the work.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Depends, Request

from app import validation
from app.api.deps import RuntimeDep
from app.api.serving import render_chat
from app.errors import ErrorResponse, invalid
from app.lifecycle import Runtime
from app.rag_service import (
    SOURCE_CAPS,
    ChatRequest,
    RagService,
    Retrieval,
    count_tokens,
    sources_message,
    with_sources,
)
from app.schemas import (
    ChatCompletionRequest,
    Citation,
    CitationSupport,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    RetrieveRequest,
    RetrieveResponse,
)
from nanochat.rag.attribution import Attribution, Sources

router = APIRouter(prefix="/v1", tags=["retrieval"])
RAG_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "invalid input: an empty or oversized query, k out of range, a mode the index cannot do"),
        (401, "missing or wrong API key (when keys are configured)"),
        (404, "retrieval_disabled (no NANOCHAT_RAG_INDEXES), index_not_found, or model_not_found"),
        (413, "request body too large"),
        (429, "NANOCHAT_RAG_QUEUE searches wait already; retry after Retry-After seconds"),
        (503, "the index is loading or failed to load (the message says why), or the server is draining"),
    ]
}
EXAMPLES = {
    "a question": {
        "summary": "the 4 best chunks of the default index",
        "value": {"query": "How do I roll back a release?"},
    },
    "an index, k and a mode": {
        "summary": "BM25 only, 2 chunks",
        "value": {"query": "prefix caching", "index": "docs", "k": 2, "mode": "bm25"},
    },
}


async def rag_service(request: Request) -> RagService:
    """FastAPI dependency: the app's RagService."""
    return request.app.state.runtime.rag


RagDep = Annotated[RagService, Depends(rag_service)]


@router.post("/retrieve", response_model=RetrieveResponse, responses=RAG_ERRORS)
async def retrieve(
    body: Annotated[RetrieveRequest, Body(openapi_examples=EXAMPLES)], rt: RuntimeDep, rag: RagDep
) -> RetrieveResponse:
    """The k chunks of an index that best answer `query`, best first."""
    if rt.stopping:
        raise rt.not_ready_error()
    query = rag.check_query(body.query, "query")
    retrieval = await rag.search(body.index, query, body.k, body.mode)
    return RetrieveResponse(
        index=retrieval.index,
        mode=retrieval.mode,  # type: ignore[arg-type]
        embedder=retrieval.embedder,
        data=retrieval.chunks(),
        dropped=retrieval.dropped,
    )


@router.post("/embeddings", response_model=EmbeddingResponse, responses=RAG_ERRORS)
async def embeddings(body: EmbeddingRequest, rt: RuntimeDep, rag: RagDep) -> EmbeddingResponse:
    """OpenAI's embeddings, from an index's embedder (unit-length vectors)."""
    if rt.stopping:
        raise rt.not_ready_error()
    texts = embedding_texts(body.input, rt)
    model, vectors = await rag.embed(body.model, texts)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        message = f"dimensions is {body.dimensions}; the embedder {model!r} makes {vectors.shape[1]}"
        raise invalid(message, "dimensions", "unsupported_parameter")
    data = [
        Embedding(index=i, embedding=_encoded(vector, body.encoding_format))
        for i, vector in enumerate(vectors)
    ]
    tokens = count_tokens(texts)
    return EmbeddingResponse(
        data=data, model=model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )


def embedding_texts(value: str | list[str], rt: Runtime) -> list[str]:
    """The inputs as a list, within NANOCHAT_RAG_EMBED_MAX_INPUTS and _MAX_CHARS, none blank."""
    settings = rt.settings
    texts = [value] if isinstance(value, str) else value
    if len(texts) > settings.rag_embed_max_inputs:
        limit = settings.rag_embed_max_inputs
        raise invalid(f"{len(texts)} inputs; at most {limit} (NANOCHAT_RAG_EMBED_MAX_INPUTS)", "input")
    for i, text in enumerate(texts):
        param = "input" if isinstance(value, str) else f"input.{i}"
        if not text.strip():
            raise invalid("an input is empty", param)
        if len(text) > settings.rag_embed_max_chars:
            limit = settings.rag_embed_max_chars
            raise invalid(f"{len(text)} characters; at most {limit} (NANOCHAT_RAG_EMBED_MAX_CHARS)", param)
    return texts


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # what the official client asks for: little-endian float32
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


# ---- chat -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grounding:
    """What a chat request with `retrieval` answers from: the citations its response carries, and the
    sources' texts its reply's sentences are attributed to (nanochat.rag.attribution)."""

    citations: list[Citation]
    sources: Sources
    mark: bool  # `retrieval.attribute`: add [n] markers

    def attribution(self) -> Attribution:
        return Attribution(self.sources, self.mark)


def check_attribution(body: ChatCompletionRequest) -> None:
    """`retrieval.attribute` edits the reply's text: not with logprobs (their tokens would no longer add up
    to it), tools (a call's arguments are not prose) or a JSON response_format (markers would break it)."""
    if body.retrieval is None or not body.retrieval.attribute:
        return
    json_format = body.response_format is not None and body.response_format.type != "text"
    for name, given in (
        ("logprobs", body.logprobs),
        ("tools", body.tools),
        ("a JSON response_format", json_format),
    ):
        if given:
            raise invalid(f"retrieval.attribute cannot be combined with {name}", "retrieval.attribute")


async def with_retrieval(body: ChatRequest, rt: Runtime) -> tuple[ChatRequest, Grounding]:
    """A chat request with `retrieval` (OpenAI's or the web page's): its last user message searched in the
    index, the chunks in its system message as numbered sources, and what its response is grounded on (the
    request comes back without `retrieval`). The prompt must leave room for the reply (at least
    min(max_tokens, a quarter of the context)): the sources' texts are cut (SOURCE_CAPS), down to their
    titles, and if even those do not fit, the last sources are left out."""
    options = body.retrieval
    assert options is not None
    rag: RagService = rt.rag
    if rt.stopping:
        raise rt.not_ready_error()
    question = next((m.text for m in reversed(body.messages) if m.role == "user"), "")
    limit = rt.settings.rag_max_query_chars
    query = question[-limit:]  # a long message: its end, where the question usually is
    retrieval = await rag.search(options.index, query, options.k, options.mode, "retrieval.")
    rt.scheduler_or_503()  # the fit needs the model's tokenizer
    _, requested = body.requested_max_tokens()
    reserve = min(requested or validation.default_max_tokens(rt.settings), rt.context // 4)
    candidate, given = body, retrieval
    for count in range(len(retrieval.hits), 0, -1):  # all the sources first; fewer only if titles overflow
        given = retrieval.first(count)
        for cap in SOURCE_CAPS:
            candidate = with_sources(body, sources_message(given, cap))
            if validation.fits(len(render_chat(rt, candidate.messages)) + reserve, rt.context):
                return candidate, grounding(given, bool(options.attribute))
    return candidate, grounding(given, bool(options.attribute))  # not even one title fits: generation's 400


def citation_supports(choice: int, attribution: Attribution) -> list[CitationSupport]:
    """The `supports` of a choice whose reply `attribution` has read to its end."""
    return [
        CitationSupport(
            choice=choice,
            start=s.start,
            end=s.end,
            sources=list(s.sources),
            scores=list(s.scores),
            cited=list(s.cited),
        )
        for s in attribution.supports
    ]


def grounding(retrieval: Retrieval, mark: bool) -> Grounding:
    """The citations of the sources given, and their whole chunks' texts to attribute the reply to (the
    prompt may have carried them cut)."""
    texts = [hit.chunk.text for hit in retrieval.hits]
    return Grounding(retrieval.citations(), Sources(texts), mark)
