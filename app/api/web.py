"""The nanochat web protocol: `POST /chat/completions`, what nanochat's own chat page speaks.

Request `{"messages": [...], "temperature"?, "max_tokens"?, "top_k"?}`; the reply is Server-Sent Events,
`data: {"token": "<text>", "gpu": 0}` per piece of text, then `data: {"done": true}`. Limits and errors are
those of the OpenAI routes (an error before the stream is a JSON error response; one after it started is a
`data: {"error": {...}}` event). Defaults follow nanochat's chat_web: temperature 0.8, top_k 50
(`WebChatRequest.to_sampling_params`). The guardrail screens the user's messages as on the OpenAI routes.

With `"retrieval": {...}` (the same object as on `/v1/chat/completions`, docs/rag.md) the prompt carries
the index's chunks as numbered sources and the last event is `data: {"done": true, "citations": [...],
"supports": [...]}`; with `attribute`, the tokens carry the `[n]` markers. A bad `retrieval` is a JSON
error before the stream. Without it, the events are exactly those above.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import RequestId, RuntimeDep
from app.api.rag import Grounding, citation_supports, with_retrieval
from app.api.serving import delta_groups, event_stream, prepare_generation, sse
from app.contract import WEB_CHAT_PATH
from app.errors import GENERATION_ERRORS, from_exception
from app.scheduler import GenerationStream, SchedulerError
from app.schemas import WebChatRequest

router = APIRouter(tags=["nanochat"])
GPU = 0  # nanochat's field for the worker that answered; one model per process here


@router.post(
    WEB_CHAT_PATH,
    response_class=Response,
    responses={**GENERATION_ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "SSE"}},
)
async def chat(body: WebChatRequest, rt: RuntimeDep, rid: RequestId) -> Response:
    grounded = None
    if body.retrieval is not None:  # no logprobs, tools or response_format here: nothing the markers break
        body, grounded = await with_retrieval(body, rt)
    generation = await prepare_generation(body, rt, rid)
    return event_stream(_events(generation.stream, grounded), generation.stream, generation.headers)


async def _events(stream: GenerationStream, grounded: Grounding | None) -> AsyncIterator[str]:
    """Token events, then done; `grounded`: each token's text through the attribution (which adds the
    markers when asked), and the citations and supports with done. A web request has one choice."""
    attribution = grounded.attribution() if grounded is not None else None
    mark = grounded is not None and grounded.mark
    try:
        async for group in delta_groups(stream):
            events = []
            for d in group:
                text = d.text
                if attribution is not None:  # not marking, it only watches: the text goes out as it came
                    marked = attribution.step(d.text, bool(d.finish_reason))
                    text = marked if mark else text
                if text:
                    events.append(sse({"token": text, "gpu": GPU}))
            if events:
                yield "".join(events)
    except SchedulerError as e:
        yield sse(from_exception(e))
        return
    if grounded is None:
        yield sse({"done": True})
        return
    citations = [c.model_dump(mode="json", exclude_none=True) for c in grounded.citations]
    supports = [s.model_dump(mode="json") for s in citation_supports(0, attribution)]
    yield sse({"done": True, "citations": citations, "supports": supports})
