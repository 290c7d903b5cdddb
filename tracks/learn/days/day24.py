"""Day 24: a pipeline's greedy completion, compared with model.generate on a tiny local GPT-2."""

from __future__ import annotations

from types import ModuleType

from tracks.learn.core import Exercise, Failure

PROMPTS = ("the cat sat", "a big dog ran")


def check(module: ModuleType) -> None:
    import torch

    from tracks.learn.tiny_hf import tiny_gpt2, tiny_tokenizer

    tokenizer, model = tiny_tokenizer(), tiny_gpt2()
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=1)
        want = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        given = f"a tiny GPT-2 (local config), prompt {prompt!r}, max_new_tokens=4"
        torch.manual_seed(1)
        got = module.complete(model, tokenizer, prompt, max_new_tokens=4)
        if not isinstance(got, str):
            raise Failure(
                "the result is not a string",
                given,
                repr(want),
                type(got).__name__,
                "the pipeline returns [{'generated_text': ...}]: take [0]['generated_text']",
            )
        if got.strip() == want:
            continue
        hint = "decode greedily: do_sample=False"
        if got.strip().startswith(prompt):
            hint = "the prompt is in the output: pass return_full_text=False"
        elif len(got.split()) > len(want.split()) and got.split()[: len(want.split())] == want.split():
            hint = "too many tokens: max_new_tokens counts new tokens only (max_length counts the prompt too)"
        raise Failure("the completion is not the greedy continuation", given, repr(want), repr(got), hint)


HINTS = (
    "The pipeline call takes generation options as keyword arguments.",
    "Greedy is do_sample=False; the length is max_new_tokens; return_full_text decides about the prompt.",
    "generator(prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)"
    "[0]['generated_text'].",
)
EXERCISE = Exercise(
    24,
    "hf_pipeline",
    "a Hugging Face pipeline",
    "intermediate",
    HINTS,
    ("nanochat/hf_export.py and docs/hf.md (tests/nanochat/test_hf_export.py)",),
    check,
)
