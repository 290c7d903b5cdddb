"""An engine over any local Hugging Face causal LM folder: a `nanochat.backend.GenerationBackend`.

`app.scheduler.Scheduler` drives it as it drives nanochat's `Engine`: both are
`nanochat.batching.BatchedEngine`s, so the lifecycle (begin, chunked prefill, one batched decode step over
every decoding sequence whatever its length, cancel, reset), the sampling (nanochat's `sample_next_token`:
temperature, top-k, top-p, seed; the first token is shared by the n continuations) and the finish rules
("stop" on an end-of-sequence token, a stop token id or a stop string; "length" at max_tokens or the
context) are the same code. This module holds only the model's forwards and where the keys/values live.

How a decode step batches sequences of different lengths: every sequence has a row of one preallocated
cache, transformers' `StaticCache` written row by row (`nanochat.hf_cache.RowStaticCache`): each row holds
its own keys and values and length, a step passes each row's position id and an attention mask that hides
what lies past a row's length, and the new keys and values are written in place. Nothing is copied per
step; a row is copied only when a generation's n continuations start (n > 1) and when a sequence leaves
(the last row moves into its place, keeping the decoding rows contiguous, as nanochat's `Engine` does).
Full-attention models only (sdpa or eager attention); sliding-window and recurrent models are refused.
The cache is reserved up front (`max_batch` rows x the context): `memory_plan` (and `engine.memory`) gives
the weights' and the cache's bytes, and `from_pretrained` checks them against a memory limit before loading.

`HFTokenizer` is a `nanochat.backend.ChatTokenizer` over the transformers tokenizer, with the methods of
nanochat's `Tokenizer`: plain-text `encode` (text that looks like a special token stays text), `decode`,
special tokens, and `chat_prompt` / `render_conversation` / `render_for_completion` through the
tokenizer's own chat template. Streamed text comes from incremental decoding that holds back an
incomplete UTF-8 character, so a stream never splits one. The calculator tool of nanochat's engine is not
run here.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nanochat.backend import Continuation, EngineError, Generation, SamplingParams
from nanochat.batching import BatchedEngine
from nanochat.constrain import Grammars
from nanochat.detokenize import TextStream
from nanochat.device import resolve_dtype
from nanochat.hf_export import byte_to_unicode
from nanochat.memory import MemoryPlan, check_fits, context_tokens, module_bytes
from nanochat.tokenizer import TokenizerError

_SENTINEL = re.compile("\ue000(\\d+)\ue001")  # private-use characters around a content index


class HFEngineError(EngineError):
    """A model folder that cannot be served; the message says what to fix."""


# ---- tokenizer ------------------------------------------------------------------------------------
class HFTokenizer:
    """A transformers tokenizer with the nanochat `Tokenizer` methods the engine and the service call."""

    def __init__(self, tokenizer: Any) -> None:
        self.hf = tokenizer
        self._special = {
            token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens
        }
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
        self._marks_generation = bool(re.search(r"{%-?\s*generation\s*-?%}", template))
        backend = getattr(tokenizer, "backend_tokenizer", None)
        byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
        self._to_byte = {c: b for b, c in byte_to_unicode().items()} if byte_level else None

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def get_vocab_size(self) -> int:
        return self.vocab_size

    def get_special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def bos_token_id(self) -> int | None:
        return self.hf.bos_token_id

    def get_bos_token_id(self) -> int | None:
        """None for models without one: `encode(text, prepend=None)` then adds nothing."""
        return self.hf.bos_token_id

    def encode_special(self, name: str) -> int:
        try:
            return self._special[name]
        except (KeyError, TypeError):
            raise TokenizerError(
                f"this tokenizer has no special token {name!r}; it has {sorted(self._special)}"
            ) from None

    def encode(
        self, text: str | list[str], prepend: int | str | None = None, append: int | str | None = None, **_
    ) -> list[int] | list[list[int]]:
        """Plain text -> ids: special-token text typed by a user is split like any other text."""
        prefix = [] if prepend is None else [self._token_id(prepend)]
        suffix = [] if append is None else [self._token_id(append)]
        if isinstance(text, str):
            return prefix + self._plain(text) + suffix
        if isinstance(text, list) and all(isinstance(t, str) for t in text):
            return [prefix + self._plain(t) + suffix for t in text]
        raise TokenizerError(f"encode expects a str or a list of str, got {type(text).__name__}")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token, part of a UTF-8 character for some (logprobs' `bytes`): exact for a
        byte-level BPE vocabulary (GPT-2's byte alphabet, as `nanochat export-hf` writes); for others, and
        for special tokens, the UTF-8 of the token's text."""
        if not isinstance(token_id, int) or not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id!r} is not in the vocabulary of {self.vocab_size}")
        if self._to_byte is not None and token_id not in self._special.values():
            piece = self.hf.convert_ids_to_tokens(token_id)
            if all(char in self._to_byte for char in piece):
                return bytes(self._to_byte[char] for char in piece)
        return self.decode([token_id]).encode("utf-8")

    def render_conversation(
        self, conversation: Mapping[str, Any], max_tokens: int = 2048
    ) -> tuple[list[int], list[int]]:
        """(ids, mask) of a {"messages": [...]} conversation through the chat template, cut to max_tokens.

        mask is 1 on what the assistant writes when the template marks it with {% generation %}, else 0."""
        ids, mask = self._render(_messages(conversation), add_generation_prompt=False)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: Mapping[str, Any]) -> list[int]:
        """Prompt ids for the assistant's next turn: the last (assistant) message is dropped and the
        template's generation prompt added, as nanochat's `Tokenizer.render_for_completion` does."""
        messages = _messages(conversation)
        if not isinstance(messages[-1], Mapping) or messages[-1].get("role") != "assistant":
            raise TokenizerError(
                "render_for_completion expects the conversation to end with an assistant message"
            )
        return self._render(messages[:-1], add_generation_prompt=True)[0]

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt ids for answering `messages` (ending with the user's turn)."""
        return self._render(messages, add_generation_prompt=True)[0]

    # ---- internals --------------------------------------------------------------------------------
    def _plain(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _token_id(self, token: int | str) -> int:
        if isinstance(token, str):
            return self.encode_special(token)
        if isinstance(token, int) and not isinstance(token, bool) and 0 <= token < self.vocab_size:
            return token
        raise TokenizerError(f"prepend/append must be a token id or a special-token name, got {token!r}")

    def _render(self, messages: list[Any], add_generation_prompt: bool) -> tuple[list[int], list[int]]:
        from jinja2.exceptions import TemplateError

        if not self.hf.chat_template:
            raise TokenizerError("this model's tokenizer has no chat template; use completions instead")
        try:
            if not any(special in text for text in _texts(messages) for special in self._special):
                mask_wanted = self._marks_generation and not add_generation_prompt
                out = self.hf.apply_chat_template(
                    messages,
                    tokenize=True,
                    return_dict=True,
                    add_generation_prompt=add_generation_prompt,
                    return_assistant_tokens_mask=mask_wanted,
                )
                ids = list(out["input_ids"])
                return ids, list(out["assistant_masks"]) if mask_wanted else [0] * len(ids)
            ids = self._render_guarded(messages, add_generation_prompt)
            return ids, [0] * len(ids)  # no training mask on this path: it serves prompts
        except TemplateError as exc:
            raise TokenizerError(f"the chat template refused the conversation: {exc}") from None

    def _render_guarded(self, messages: list[Any], add_generation_prompt: bool) -> list[int]:
        """Render with every content replaced by a marker, then encode the template's text with special
        tokens and each content as plain text: typed "<|im_start|>" cannot become a control token."""
        contents: list[str] = []

        def mark(text: str) -> str:
            contents.append(text)
            return f"\ue000{len(contents) - 1}\ue001"

        marked = [_map_texts(m, mark) for m in messages]
        rendered = self.hf.apply_chat_template(
            marked, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        ids: list[int] = []
        for i, piece in enumerate(_SENTINEL.split(rendered)):
            if i % 2:
                ids += self._plain(contents[int(piece)])
            elif piece:
                ids += self.hf(piece, add_special_tokens=False)["input_ids"]
        return ids


def _messages(conversation: Mapping[str, Any]) -> list[Any]:
    messages = conversation.get("messages") if isinstance(conversation, Mapping) else None
    if not isinstance(messages, list) or not messages:
        raise TokenizerError('a conversation must be a dict {"messages": [...]} with at least one message')
    return messages


def _texts(messages: list[Any]) -> list[str]:
    found: list[str] = []
    for message in messages:
        _map_texts(message, lambda t: found.append(t) or t)
    return found


def _map_texts(message: Any, fn) -> Any:
    """A copy of a message with fn applied to its content text (a str, or each part's "text")."""
    if not isinstance(message, Mapping):
        raise TokenizerError("every message must be a dict with 'role' and 'content'")
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": fn(content)}
    if isinstance(content, list):
        parts = [_map_part(part, fn) for part in content]
        return {**message, "content": parts}
    return message


def _map_part(part: Any, fn) -> Any:
    if isinstance(part, Mapping) and isinstance(part.get("text"), str):
        return {**part, "text": fn(part["text"])}
    return part


class IncrementalText(TextStream):
    """`TextStream` (same stop-string handling) fed by the HF tokenizer's incremental decoding: the text
    of the tokens since the last emitted character, held back while it ends in an incomplete character."""

    def __init__(self, decode, special_ids, stop) -> None:
        super().__init__(lambda _: b"", special_ids, stop)
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # ids[prefix:read] is the text already emitted, kept as context for the decoder
        self._read = 0

    def feed(self, token: int) -> str:
        if self.stopped or token in self._special:
            return ""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return self._release(text[len(before) :])

    def finish(self) -> str:
        if self.stopped:
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        return self._release(text[len(before) :], final=True)


# ---- engine ---------------------------------------------------------------------------------------
def model_context(config: Any, tokenizer: HFTokenizer) -> int:
    """The model's own context: its config's max_position_embeddings, else the tokenizer's limit."""
    return getattr(config, "max_position_embeddings", None) or tokenizer.hf.model_max_length


def memory_plan(
    config: Any, dtype: torch.dtype, weights_bytes: int, max_batch: int, context: int
) -> MemoryPlan:
    """The weights and the keys/values the engine reserves: `max_batch` rows (the prefill's are among them)
    of `context` tokens, from the config's layers, key/value heads and head size."""
    text = config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * dtype.itemsize
    return MemoryPlan(weights_bytes, dtype, per_token * max_batch * context, rows=max_batch, context=context)


class HFEngine(BatchedEngine):
    """Continuous-batching generation over a transformers causal LM; see the module docstring."""

    tokenizer: HFTokenizer

    def __init__(
        self,
        model: Any,
        tokenizer: HFTokenizer,
        max_batch: int = 16,
        max_seq_len: int | None = None,
        prefill_chunk: int = 512,
    ) -> None:
        context = context_tokens(max_seq_len, model_context(model.config, tokenizer))
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.hf.eos_token_id is not None:
            eos.append(tokenizer.hf.eos_token_id)
        super().__init__(
            max_batch=max_batch,
            max_seq_len=context,
            prefill_chunk=prefill_chunk,
            device=next(model.parameters()).device,
            vocab_size=model.config.get_text_config().vocab_size,
            eos_token_ids=frozenset(eos),
        )
        from nanochat.hf_cache import RowStaticCache

        attention = model.config._attn_implementation
        if attention not in ("sdpa", "eager"):
            raise HFEngineError(f"attention {attention!r} is not supported here: load the model with sdpa")
        self.model = model.eval()
        self.tokenizer = tokenizer
        param = next(model.parameters())
        try:
            self.cache = RowStaticCache(
                model.config, max_batch, context, param.dtype, self.device, additive_mask=attention == "eager"
            )
        except EngineError as exc:
            raise HFEngineError(str(exc)) from None
        self._special_ids = frozenset(tokenizer.get_special_tokens().values())
        keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._only_last_logits = {"logits_to_keep": 1} if keeps_logits else {}  # a prefill chunk's last
        self.memory = MemoryPlan(module_bytes(model), param.dtype, self.cache.nbytes, max_batch, context)

    def _make_grammars(self) -> Grammars:
        eos = self.tokenizer.hf.eos_token_id
        if eos is None or not getattr(self.tokenizer.hf, "is_fast", False):
            raise HFEngineError("constrained decoding needs a fast tokenizer with an eos token")
        return Grammars.for_transformers(self.tokenizer.hf, self.vocab_size, eos)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        max_batch: int = 16,
        max_seq_len: int | None = None,
        prefill_chunk: int = 512,
        memory_limit: int | None = None,
    ) -> HFEngine:
        """Load a local model folder (config.json, weights, tokenizer files). Before the weights are loaded,
        the context asked for (`max_seq_len`) is checked against the model's, and the weights and the most
        the cache can take against `memory_limit` (and a CUDA device's free memory): ContextLengthError,
        MemoryLimitError."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise HFEngineError(f"{folder} is not a Hugging Face model folder (no config.json)")
        device = torch.device(device)
        dtype = dtype or resolve_dtype(None, device)
        tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(folder))
        config = AutoConfig.from_pretrained(folder)
        context = context_tokens(max_seq_len, model_context(config, tokenizer))
        with torch.device("meta"):
            weights = module_bytes(AutoModelForCausalLM.from_config(config), dtype)
        check_fits(memory_plan(config, dtype, weights, max_batch, context), memory_limit, device)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
        model = model.to(device)
        return cls(model, tokenizer, max_batch, max_seq_len, prefill_chunk)

    # ---- the model over the row cache (BatchedEngine's hooks) ------------------------------------------
    def _text_stream(self, params: SamplingParams) -> IncrementalText:
        return IncrementalText(self._decode_text, self._special_ids, params.stop)

    def _reset_prefill(self) -> None:
        self.cache.reset_row(self._prefill_row)

    def _forward_prefill(self, ids: list[int], start: int, every: bool = False) -> torch.Tensor:
        return self._forward([ids], self._prefill_row, every)

    def _take_prefill(self, generation: Generation) -> None:
        prefill_row = generation.continuations[0].row  # the prefill row is the first continuation's
        for cont in generation.continuations[1:]:
            self.cache.copy_row(prefill_row, cont.row)

    def _forward_decode(self, rows: list[Continuation]) -> torch.Tensor:
        return self._forward([[c.last_token] for c in rows], 0)  # rows[i] is cache row i

    def _row_length(self, cont: Continuation) -> int:
        return self.cache.lengths[cont.row]

    def _copy_row(self, src: int, dst: int) -> None:
        self.cache.copy_row(src, dst)

    def _forget_rows(self) -> None:
        for row in range(self.cache.rows):
            self.cache.reset_row(row)

    # ---- internals --------------------------------------------------------------------------------
    def _forward(self, ids: list[list[int]], start_row: int, every: bool = False) -> torch.Tensor:
        """One forward of len(ids) rows from `start_row`, each continuing its own cache row; returns the fp32
        logits after each row's last token, (len(ids), vocab) (`every`, one row: after each token)."""
        plan = self.cache.plan(start_row, len(ids), len(ids[0]))
        out = self.model(
            input_ids=torch.tensor(ids, device=self.device),
            attention_mask=plan.attention_mask,
            position_ids=plan.position_ids,
            cache=self.cache,
            use_cache=True,
            **({} if every else self._only_last_logits),
        )
        self.cache.advance()
        return out.logits[0].float() if every else out.logits[:, -1, :].float()

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.hf.decode(ids, skip_special_tokens=True)
