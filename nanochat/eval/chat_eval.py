"""The chat evaluation harness: run `Task` examples, and other generation checks, on a model + tokenizer.

- Multiple choice, as nanochat scores it ("categorical"): the question with its lettered choices is the
  user turn, the prompt is `render_for_completion`, and one forward gives the logits for the reply's
  first token; the prediction is the letter whose token has the highest logit among the letters only.
  Every letter must be a single token. Examples run in batches with right padding (causal attention
  makes the padding invisible to the real positions).
- Exact match: greedy generation with the engine, calculator tool on, up to `max_tokens`; the final
  answer is extracted from the reply (`tasks.extract_answer`) and compared with the normalised answer.
- `assistant_end_rate`: how often a chat model closes its reply properly.
- `mention_rate`: how often greedy replies to prompts say a word (the demo model's identity score).
- `sample_completions`: base-model completions of plain text prompts.

It does not load tasks or checkpoints (see `tasks` and `commands`).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from nanochat.engine import Continuation, Engine, SamplingParams
from nanochat.eval import EvalError
from nanochat.eval.tasks import EXACT_MATCH, MULTIPLE_CHOICE, Task, extract_answer, normalize_answer
from nanochat.gpt import GPT
from nanochat.tokenizer import Tokenizer

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_TOKENS = 512  # GSM8K solutions with tool calls run to a few hundred tokens


class ChatEvalError(EvalError):
    """A task that cannot be scored with this model or tokenizer (e.g. a letter that is not one token)."""


def predict_multiple_choice(
    model: GPT, tokenizer: Tokenizer, examples: Sequence[Task], batch_size: int = DEFAULT_BATCH_SIZE
) -> list[str]:
    """The predicted letter for each multiple-choice example."""
    if batch_size < 1:
        raise ChatEvalError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    prompts, letter_ids = [], []
    for example in examples:
        if example.kind != MULTIPLE_CHOICE:
            raise ChatEvalError(f"{example.source or 'example'} is {example.kind}, not multiple choice")
        prompts.append(tokenizer.render_for_completion(example.conversation()))
        letter_ids.append(_letter_token_ids(tokenizer, example))
    predictions = []
    with _eval_mode(model), torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            lengths = torch.tensor([len(p) for p in batch], device=device)
            idx = torch.full((len(batch), int(lengths.max())), tokenizer.get_bos_token_id(), dtype=torch.long)
            for row, prompt in enumerate(batch):
                idx[row, : len(prompt)] = torch.tensor(prompt)
            logits = model(idx.to(device))
            last = logits[torch.arange(len(batch), device=device), lengths - 1]  # (batch, vocab)
            for row, ids in enumerate(letter_ids[start : start + batch_size]):
                example = examples[start + row]
                pick = int(torch.argmax(last[row, ids]))
                predictions.append(example.letters[pick])
    return predictions


def generate_replies(
    model: GPT,
    tokenizer: Tokenizer,
    examples: Sequence[Task],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[str]:
    """Greedy replies (tools on) to each example's prompt, as text (see `reply_text`)."""
    prompts = [tokenizer.render_for_completion(example.conversation()) for example in examples]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0, tools=True)
    sources = [example.source for example in examples]
    continuations = _generate(model, tokenizer, prompts, [params] * len(prompts), batch_size, sources)
    return [reply_text(tokenizer, c.tokens) for c in continuations]


def reply_text(tokenizer: Tokenizer, tokens: Sequence[int]) -> str:
    """Reply tokens as text: special tokens (tool markers, <|assistant_end|>) become line breaks, so a tool
    call "37*12" and its output "444" stay two numbers instead of running together as "37*12444"."""
    special = set(tokenizer.get_special_tokens().values())
    segments: list[list[int]] = [[]]
    for token in tokens:
        if token in special:
            segments.append([])
        else:
            segments[-1].append(token)
    return "\n".join(tokenizer.decode(segment) for segment in segments if segment)


def run_chat_eval(
    model: GPT,
    tokenizer: Tokenizer,
    tasks: Mapping[str, Sequence[Task]],
    max_examples: int | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, dict[str, Any]]:
    """Score each named task: {name: {"accuracy", "correct", "n", "chance", "kind"}}.

    The first `max_examples` examples of each task are used (all when None). `chance` is the expected
    accuracy of guessing (the mean of 1/choices; 0 for exact match). `kind` is the examples' kind, or
    "mixed".
    """
    results = {}
    for name, examples in tasks.items():
        chosen = list(examples if max_examples is None else examples[:max_examples])
        if not chosen:
            raise ChatEvalError(f"task {name!r} has no examples to evaluate")
        correct = [False] * len(chosen)
        choice = [i for i, e in enumerate(chosen) if e.kind == MULTIPLE_CHOICE]
        exact = [i for i, e in enumerate(chosen) if e.kind == EXACT_MATCH]
        if choice:
            letters = predict_multiple_choice(model, tokenizer, [chosen[i] for i in choice], batch_size)
            for i, letter in zip(choice, letters, strict=True):
                correct[i] = letter == chosen[i].answer
        if exact:
            replies = generate_replies(model, tokenizer, [chosen[i] for i in exact], max_tokens, batch_size)
            for i, reply in zip(exact, replies, strict=True):
                correct[i] = extract_answer(reply) == normalize_answer(chosen[i].answer)
        kinds = {e.kind for e in chosen}
        results[name] = {
            "kind": kinds.pop() if len(kinds) == 1 else "mixed",
            "n": len(chosen),
            "correct": sum(correct),
            "accuracy": sum(correct) / len(chosen),
            "chance": sum(e.chance for e in chosen) / len(chosen),
        }
    return results


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of `run_chat_eval` results, for reports."""
    lines = ["| task | kind | n | accuracy | chance |", "|---|---|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['kind']} | {r['n']} | {r['accuracy']:.4f} | {r['chance']:.4f} |")
    return "\n".join(lines)


def assistant_end_rate(
    model: GPT,
    tokenizer: Tokenizer,
    conversations: Iterable[Mapping[str, Any]],
    max_tokens: int = 64,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """The fraction of conversations whose reply is well formed.

    For each conversation (ending with an assistant message, which is dropped), generate greedily with
    tools on. A reply counts when it holds visible text (a non-whitespace character in what the assistant
    wrote itself, outside tool calls and tool output) and then ends with <|assistant_end|> within
    `max_tokens` tokens. Running out of tokens, ending with <|bos|>, or ending with no text all fail.
    """
    conversations = list(conversations)
    if not conversations:
        raise ChatEvalError("assistant_end_rate needs at least one conversation")
    prompts = []
    for index, conversation in enumerate(conversations):
        try:
            prompts.append(tokenizer.render_for_completion(conversation))
        except ValueError as e:
            raise ChatEvalError(f"conversation {index}: {e}") from e
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0, tools=True)
    continuations = _generate(model, tokenizer, prompts, [params] * len(prompts), batch_size)
    successes = sum(_ends_properly(tokenizer, c) for c in continuations)
    return successes / len(conversations)


def mention_rate(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    word: str,
    max_tokens: int = 64,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[float, list[str]]:
    """(share of replies that contain `word`, case-insensitive; the replies): greedy replies, tools on,
    to each prompt as a one-turn conversation."""
    if not prompts:
        raise ChatEvalError("mention_rate needs at least one prompt")
    examples = [Task(kind=EXACT_MATCH, prompt=prompt, answer="") for prompt in prompts]
    replies = generate_replies(model, tokenizer, examples, max_tokens, batch_size)
    hits = sum(word.casefold() in reply.casefold() for reply in replies)
    return hits / len(prompts), replies


def sample_completions(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    max_tokens: int,
    temperature: float = 0.0,
    seed: int = 42,
    top_k: int | None = None,
) -> list[str]:
    """Base-model completions of plain text prompts (<|bos|> prepended), without the prompt.

    Prompt i is sampled with seed + i, so each completion is the same whatever else is in the batch.
    Generation stops at <|bos|> (a new document) or <|assistant_end|>; tools are off.
    """
    ids = [tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id()) for prompt in prompts]
    params = [
        SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed + i, tools=False
        )
        for i in range(len(prompts))
    ]
    continuations = _generate(model, tokenizer, ids, params)
    special = set(tokenizer.get_special_tokens().values())
    return [tokenizer.decode([t for t in c.tokens if t not in special]) for c in continuations]


# ---- internals ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put a model in eval mode for a block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _letter_token_ids(tokenizer: Tokenizer, example: Task) -> list[int]:
    ids = []
    for letter in example.letters:
        encoded = tokenizer.encode(letter)
        if len(encoded) != 1:
            raise ChatEvalError(
                f"{example.source or 'example'}: choice letter {letter!r} is {len(encoded)} tokens with this "
                "tokenizer; multiple choice is scored on the reply's first token, so every letter must be "
                "exactly one token"
            )
        ids.append(encoded[0])
    return ids


def _generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    batch_size: int = DEFAULT_BATCH_SIZE,
    sources: Sequence[str] | None = None,
) -> list[Continuation]:
    """Run every prompt to completion on one engine, up to `batch_size` at a time; one continuation each."""
    if batch_size < 1:
        raise ChatEvalError(f"batch_size must be >= 1, got {batch_size}")
    results: list[Continuation | None] = [None] * len(prompts)
    if not prompts:
        return []
    with _eval_mode(model):
        engine = Engine(model, tokenizer, max_batch=batch_size)
        waiting = deque(range(len(prompts)))
        while waiting or engine.num_decoding:
            while waiting and engine.can_begin(1):
                i = waiting.popleft()
                try:
                    request = engine.begin(prompts[i], params[i])
                except ValueError as e:
                    where = sources[i] if sources and sources[i] else f"prompt {i}"
                    raise ChatEvalError(f"{where}: {e}") from e
                while request.prefill_remaining:
                    engine.prefill(request)
                results[i] = request.continuations[0]
            engine.decode_step()
    return results  # type: ignore[return-value]


def _ends_properly(tokenizer: Tokenizer, continuation: Continuation) -> bool:
    """See `assistant_end_rate`: visible text written by the model, then <|assistant_end|>."""
    special = tokenizer.get_special_tokens()
    tokens = continuation.tokens
    if not tokens or tokens[-1] != special["<|assistant_end|>"]:
        return False
    starts = {special["<|python_start|>"], special["<|output_start|>"]}
    ends = {special["<|python_end|>"], special["<|output_end|>"]}
    special_ids = set(special.values())
    text_ids, inside_tool = [], False
    for token, sampled in zip(tokens[:-1], continuation.masks[:-1], strict=True):
        if token in starts:
            inside_tool = True
        elif token in ends:
            inside_tool = False
        elif sampled and not inside_tool and token not in special_ids:
            text_ids.append(token)
    return bool(tokenizer.decode(text_ids).strip())
