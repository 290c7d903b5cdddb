"""Day 24: text generation with a Hugging Face pipeline.

Write `complete(model, tokenizer, prompt, max_new_tokens)`: build a "text-generation" pipeline from the
model and tokenizer you are given (nothing from the hub), decode greedily (the same text every time) for
at most max_new_tokens new tokens, and return only the generated continuation, without the prompt.
"""

from transformers import pipeline


def complete(model, tokenizer, prompt: str, max_new_tokens: int = 6) -> str:
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    # TODO: call generator(prompt, ...) with greedy decoding, a limit on new tokens, no prompt in the output
    raise NotImplementedError("the generation call and its options")
