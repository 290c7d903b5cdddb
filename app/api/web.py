"""The nanochat web protocol: `POST /chat/completions`, what nanochat's own chat page speaks.

Request `{"messages": [...], "temperature"?, "max_tokens"?, "top_k"?}`; the reply is Server-Sent Events,
`data: {"token": "<text>", "gpu": 0}` per piece of text, then `data: {"done": true}`. Limits and errors are
those of the OpenAI routes (an error before the stream is a JSON error response; one after it started is a
`data: {"error": {...}}` event). Defaults follow nanochat's chat_web: temperature 0.8, top_k 50
(`WebChatRequest.to_sampling_params`). The guardrail screens the user's messages as on the OpenAI routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import RequestId, RuntimeDep
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
    generation = await prepare_generation(body, rt, rid)
    return event_stream(_events(generation.stream), generation.stream, generation.headers)


async def _events(stream: GenerationStream) -> AsyncIterator[str]:
    try:
        async for group in delta_groups(stream):
            events = [sse({"token": d.text, "gpu": GPU}) for d in group if d.text]
            if events:
                yield "".join(events)
    except SchedulerError as e:
        yield sse(from_exception(e))
        return
    yield sse({"done": True})
