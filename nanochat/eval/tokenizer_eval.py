"""Tokenizer compression: UTF-8 bytes per token of our tokenizer on named texts, against baselines.

Baselines are tiktoken's public encodings (GPT-2's "gpt2", GPT-4's "cl100k_base") and, optionally, our
own previous tokenizer. tiktoken downloads an encoding's BPE file the first time it is used (into
TIKTOKEN_CACHE_DIR); where that cannot happen (offline), the baseline is reported as unavailable with the
reason instead of failing the report. More bytes per token means better compression.

It does not train tokenizers or read files (the `eval tokenizer` command does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tiktoken

from nanochat.eval import EvalError
from nanochat.tokenizer import Tokenizer

DEFAULT_BASELINES = ("gpt2", "cl100k_base")
DEFAULT_LOAD_TIMEOUT_S = 10.0
OURS = "ours"
PREVIOUS = "previous"


def compression_report(
    tokenizer: Tokenizer,
    texts: Mapping[str, str],
    baselines: Sequence[str] = DEFAULT_BASELINES,
    previous: Tokenizer | None = None,
    load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
) -> dict[str, Any]:
    """Bytes per token on each text for our tokenizer, `previous` (if given) and each tiktoken baseline.

    Returns {"bytes": {text: n}, "encoders": {encoder: {"available": bool, "reason": str | None,
    "vocab_size": int | None, "tokens": {text: n}, "bytes_per_token": {text: x}}}}, encoders in the order
    ours, previous, baselines. A baseline that cannot be loaded within `load_timeout_s` seconds is
    unavailable, with the reason; its token counts are empty.
    """
    if not texts:
        raise EvalError("compression_report needs at least one text")
    sizes = {}
    for name, text in texts.items():
        if not isinstance(text, str) or not text:
            raise EvalError(f"text {name!r} is empty (or not a str); there is nothing to compress")
        sizes[name] = len(text.encode("utf-8"))
    encoders: dict[str, dict[str, Any]] = {}

    def measure(name: str, encode: Callable[[str], list[int]], vocab_size: int) -> None:
        tokens = {text_name: len(encode(text)) for text_name, text in texts.items()}
        encoders[name] = {
            "available": True,
            "reason": None,
            "vocab_size": vocab_size,
            "tokens": tokens,
            "bytes_per_token": {text_name: sizes[text_name] / tokens[text_name] for text_name in texts},
        }

    measure(OURS, tokenizer.encode, tokenizer.vocab_size)
    if previous is not None:
        measure(PREVIOUS, previous.encode, previous.vocab_size)
    for name in baselines:
        encoding, reason = load_tiktoken_encoding(name, load_timeout_s)
        if encoding is None:
            encoders[name] = {
                "available": False,
                "reason": reason,
                "vocab_size": None,
                "tokens": {},
                "bytes_per_token": {},
            }
        else:
            measure(name, encoding.encode_ordinary, encoding.n_vocab)
    return {"bytes": sizes, "encoders": encoders}


def compression_table(report: Mapping[str, Any]) -> str:
    """A markdown table of a `compression_report`: bytes per token per text and encoder, then one line per
    unavailable baseline with its reason."""
    encoders = report["encoders"]
    names = list(encoders)
    header = [
        "text",
        "bytes",
        *(f"{n} (vocab {e['vocab_size']})" if e["available"] else n for n, e in encoders.items()),
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for text_name, size in report["bytes"].items():
        cells = [text_name, str(size)]
        for name in names:
            value = encoders[name]["bytes_per_token"].get(text_name)
            cells.append("n/a" if value is None else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Bytes per token (higher compresses better).")
    for name in names:
        if not encoders[name]["available"]:
            lines.append(f"- {name}: unavailable ({encoders[name]['reason']})")
    return "\n".join(lines)


def load_tiktoken_encoding(name: str, timeout_s: float) -> tuple[tiktoken.Encoding | None, str | None]:
    """(encoding, None), or (None, why not) when tiktoken cannot load it within `timeout_s` seconds.

    The load runs on a daemon thread: tiktoken fetches missing BPE files over HTTP without a timeout, and a
    hung fetch must neither stall the report nor keep the process alive.
    """
    if name not in tiktoken.list_encoding_names():
        return None, f"tiktoken has no encoding {name!r}; known: {', '.join(tiktoken.list_encoding_names())}"
    outcome: dict[str, Any] = {}

    def load() -> None:
        try:
            outcome["encoding"] = tiktoken.get_encoding(name)
        except Exception as e:  # network and cache errors of any kind all mean "unavailable"
            outcome["error"] = e

    thread = threading.Thread(target=load, name=f"tiktoken-load-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "encoding" in outcome:
        return outcome["encoding"], None
    if "error" in outcome:
        error = outcome["error"]
        message = (str(error).splitlines() or [""])[0]
        message = message if len(message) <= 160 else message[:160] + "…"
        return None, (
            f"tiktoken could not load {name!r} ({type(error).__name__}: {message}); it downloads the BPE "
            "file at first use, so run once where that is possible or fill TIKTOKEN_CACHE_DIR"
        )
    return None, (
        f"loading {name!r} took longer than {timeout_s:g}s (tiktoken downloads the BPE file at first use; "
        "offline?)"
    )
