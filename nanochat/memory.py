"""What serving a model takes in memory, known before anything is allocated, and whether it fits.

A `MemoryPlan` is the weights' bytes and the KV cache's bytes (rows x context tokens). Each engine builds
its plan from the model's config alone, before reading the weights (`nanochat.engine.memory_plan`,
`HFEngine.memory_plan`), and keeps the same figures, from its real tensors, as `engine.memory`. `check_fits`
is the one check of a plan against the memory given: a limit (`--memory-limit`) and, on CUDA, the device's
free memory; it raises `MemoryLimitError`, one line saying what is needed and what to lower.
`context_tokens` is the one rule for the context asked for (`--max-model-len`): at most the model's own.

This module allocates nothing and knows nothing about settings: the flags it names in its messages are the
service's (`nanochat serve`), the only caller that sizes an engine by them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is not imported here: the settings parse sizes with this module, and stay quick
    import torch

UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# The prefix cache's defaults, shared by the service (`--enable-prefix-caching`, `--prefix-cache-bytes`),
# `nanochat chat` and bench.prefix_cache: on, since a miss costs nothing measurable (docs/serving.md), within
# half the KV cache's bytes. Here, not in nanochat.prefix_cache, because app.config reads them and must not
# import torch (gunicorn's master loads it).
PREFIX_CACHING_DEFAULT = True
PREFIX_CACHE_SIZE = 0.5
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


class ContextLengthError(ValueError):
    """A context asked for that is longer than the model's."""


class MemoryLimitError(ValueError):
    """A model and its KV cache that do not fit the memory given; the message says what to lower."""


def parse_bytes(text: str | int) -> int:
    """A size in bytes from `1000000`, `512MB`, `2GiB`, `1.5 GB` (kB/MB/GB/TB are powers of 1000,
    KiB/MiB/GiB/TiB of 1024; case does not matter). ValueError for anything else, or a size of 0."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        match = _SIZE.match(str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in UNITS:
            raise ValueError(f"expected a size such as 512MB, 2GiB or a number of bytes, got {text!r}")
        size = int(float(match.group(1)) * UNITS[unit])
    if size <= 0:
        raise ValueError(f"expected a size above 0, got {text!r}")
    return size


def format_bytes(size: int) -> str:
    """`8.5 MB`, `1.2 GB`, `512 B` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def context_tokens(asked: int | None, model_context: int) -> int:
    """The context to serve: the one asked for (`--max-model-len`), at most the model's; unset: its own."""
    if asked is None:
        return model_context
    if asked < 1:
        raise ContextLengthError(f"--max-model-len must be at least 1, got {asked}")
    if asked > model_context:
        raise ContextLengthError(
            f"--max-model-len {asked} is above the model's context of {model_context} tokens; "
            f"give at most {model_context}, or leave it unset"
        )
    return asked


def module_bytes(module: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of a module's parameters and buffers, and of weights kept outside them (a submodule's
    `packed_bytes`: the int8 linears of nanochat/quantize.py). With `dtype`, the parameters count in it (what
    loading converts them to): a module built on the meta device then gives the bytes before any are
    allocated."""
    params = sum(p.numel() * (dtype.itemsize if dtype else p.element_size()) for p in module.parameters())
    packed = sum(getattr(m, "packed_bytes", 0) for m in module.modules())
    return params + packed + sum(b.nbytes for b in module.buffers())


@dataclass(frozen=True)
class MemoryPlan:
    """The weights' and the KV cache's bytes. `preallocated` False: the cache is not reserved up front
    and grows with the sequences; `kv_cache_bytes` is then its most (every row at the full context)."""

    weights_bytes: int
    dtype: torch.dtype
    kv_cache_bytes: int
    rows: int  # cache rows (sequences held at once)
    context: int  # tokens per row
    preallocated: bool = True
    quantization: str = "none"  # "int8": the linear layers' weights are int8 (the rest in `dtype`)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes

    def describe(self) -> str:
        """`weights 8.5 MB (float32), KV cache 20.1 MB (17 rows x 256 tokens), total 28.6 MB`."""
        shape = f"{self.rows} rows x {self.context} tokens"
        cache = f"KV cache {format_bytes(self.kv_cache_bytes)} ({shape})"
        if not self.preallocated:
            cache = f"KV cache up to {format_bytes(self.kv_cache_bytes)} ({shape}, not preallocated)"
        weights = f"weights {format_bytes(self.weights_bytes)} ({self.weights_format})"
        return f"{weights}, {cache}, total {format_bytes(self.total_bytes)}"

    @property
    def weights_format(self) -> str:
        """`float32`, or `int8 linears, float32 rest`."""
        if self.quantization == "none":
            return dtype_name(self.dtype)
        return f"{self.quantization} linears, {dtype_name(self.dtype)} rest"

    def as_dict(self) -> dict[str, int | str | bool]:
        return {
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "kv_cache_rows": self.rows,
            "kv_cache_preallocated": self.preallocated,
            "dtype": dtype_name(self.dtype),
            "quantization": self.quantization,
        }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_fits(plan: MemoryPlan, limit: int | None, device: torch.device) -> None:
    """MemoryLimitError unless the plan fits `limit` (None: no limit of its own) and, on CUDA, the device's
    free memory now. Call it before allocating the weights."""
    bounds = []
    if limit is not None:
        bounds.append((limit, f"the memory limit is {format_bytes(limit)} (--memory-limit)"))
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        bounds.append((free, f"{device} has {format_bytes(free)} free"))
    if not bounds:
        return
    available, why = min(bounds, key=lambda bound: bound[0])
    if plan.total_bytes <= available:
        return
    lower = f"lower --max-model-len (now {plan.context}) or --max-num-seqs"
    if plan.dtype.itemsize > 2 and plan.quantization == "none":
        lower += ", or halve the weights with --dtype bfloat16 (a quarter on CPU: --quantization int8)"
    needed = (
        f"{format_bytes(plan.total_bytes)} (weights {format_bytes(plan.weights_bytes)} in "
        f"{plan.weights_format}, KV cache {format_bytes(plan.kv_cache_bytes)} for {plan.rows} rows x "
        f"{plan.context} tokens)"
    )
    raise MemoryLimitError(f"the model does not fit: it needs {needed} but {why}; {lower}")
