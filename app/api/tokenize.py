"""vLLM's tokenizer routes: `POST /tokenize` and `POST /detokenize`.

`/tokenize` takes `{model?, prompt, add_special_tokens?}` (the ids /v1/completions would run: the
beginning-of-sequence token, then the text) or `{model?, messages, add_generation_prompt?}` (the ids
/v1/chat/completions would run, uncut: nanochat's conversation rendering or the model's chat template,
the assistant's turn opened) and answers `{count, max_model_len, tokens}`. `/detokenize` takes
`{model?, tokens}` and answers `{prompt}`; an id outside the vocabulary is a 400 naming it. Both need the
model's tokenizer (503 while it loads), the API key when keys are set, and the generation routes' limits
on characters and messages; neither touches the model.
"""

from __future__ import annotations

from fastapi import APIRouter

from app import validation
from app.api.deps import RuntimeDep
from app.api.serving import decode_ids, render_chat
from app.contract import DETOKENIZE_PATH, TOKENIZE_PATH
from app.errors import GENERATION_ERRORS, invalid
from app.schemas import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

router = APIRouter(tags=["tokenizer"])
ERRORS = {status: GENERATION_ERRORS[status] for status in (400, 401, 404, 413, 503)}


@router.post(TOKENIZE_PATH, response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(body: TokenizeRequest, rt: RuntimeDep) -> TokenizeResponse:
    validation.check_model(body.model, rt.settings)
    if (body.prompt is None) == (body.messages is None):
        raise invalid("send either prompt or messages (one of the two)", "prompt")
    rt.scheduler_or_503()  # the model's tokenizer
    tokenizer = rt.tokenizer
    if body.messages is not None:
        validation.check_messages(body.messages, rt.settings)
        tokens = render_chat(rt, body.messages)
    else:
        text = validation.completion_text(body.prompt, rt.settings)
        bos = tokenizer.get_bos_token_id() if body.add_special_tokens else None
        tokens = tokenizer.encode(text, prepend=bos)
    return TokenizeResponse(count=len(tokens), max_model_len=rt.context, tokens=tokens)


@router.post(DETOKENIZE_PATH, response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, rt: RuntimeDep) -> DetokenizeResponse:
    validation.check_model(body.model, rt.settings)
    rt.scheduler_or_503()
    return DetokenizeResponse(prompt=decode_ids(rt.tokenizer, body.tokens, "tokens"))
