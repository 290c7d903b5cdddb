"""Day 24: a text-generation pipeline (reference: nanochat/hf_export.py and docs/hf.md, greedy decoding)."""

from transformers import pipeline


def complete(model, tokenizer, prompt: str, max_new_tokens: int = 6) -> str:
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    out = generator(prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
    return out[0]["generated_text"]
