"""nanochat/memory.py and the engines' memory plans: the figures computed before anything is allocated are
the bytes the real tensors take; sizes parse with their units; a context above the model's and a model
over the memory limit are refused before the weights are read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nanochat.checkpoint import load_checkpoint
from nanochat.engine import Engine, memory_plan
from nanochat.gpt import GPTConfig
from nanochat.hf_engine import HFEngine
from nanochat.kv_cache import KVCache, cache_bytes
from nanochat.memory import (
    ContextLengthError,
    MemoryLimitError,
    MemoryPlan,
    check_fits,
    format_bytes,
    module_bytes,
    parse_bytes,
)
from tests.nanochat.test_hf_export import DEMO, demo_export

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1000000", 1_000_000),
        (4096, 4096),
        ("512MB", 512_000_000),
        ("512 mb", 512_000_000),
        ("2GiB", 2 * 1024**3),
        ("1.5GB", 1_500_000_000),
        ("64KiB", 65_536),
        ("3 tib", 3 * 1024**4),
        ("10B", 10),
    ],
)
def test_sizes_parse_with_their_units(text: str | int, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["lots", "12 parsecs", "", "0", "0MB", "-5", "1e9"])
def test_a_bad_size_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(text)


def test_sizes_read_in_powers_of_1000() -> None:
    assert [format_bytes(n) for n in (512, 8_945_664, 20_054_016, 3 * 10**9)] == [
        "512 B",
        "8.9 MB",
        "20.1 MB",
        "3.0 GB",
    ]


def test_the_kv_cache_allocates_what_cache_bytes_says() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        cache = KVCache(3, 2, 16, 5, 40, dtype=dtype)
        assert cache.nbytes == cache.k.nbytes + cache.v.nbytes == cache_bytes(3, 2, 16, 5, 40, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_engines_plan_is_what_its_tensors_take(dtype: torch.dtype) -> None:
    """The plan from the config alone (nothing allocated) equals the engine's figures from its real model
    and cache, and those are the tensors' bytes."""
    demo = load_checkpoint(DEMO, dtype=dtype)
    engine = Engine(demo.model, demo.tokenizer, max_batch=4, max_seq_len=64)
    planned = memory_plan(demo.model.config, dtype, max_batch=4, max_seq_len=64)
    assert engine.memory == planned
    tensors = [*demo.model.parameters(), *demo.model.buffers()]
    assert planned.weights_bytes == sum(t.nbytes for t in tensors)
    assert planned.kv_cache_bytes == engine.cache.k.nbytes + engine.cache.v.nbytes
    assert (planned.rows, planned.context) == (5, 64)  # a row more for the prefill
    assert engine.memory.describe().endswith(
        f"KV cache {format_bytes(planned.kv_cache_bytes)} (5 rows x 64 tokens), "
        f"total {format_bytes(planned.weights_bytes + planned.kv_cache_bytes)}"
    )


def test_the_context_is_at_most_the_models() -> None:
    config = GPTConfig(sequence_len=256, vocab_size=2048, n_layer=1, n_head=2, n_kv_head=2, n_embd=64)
    assert memory_plan(config, torch.float32, 2, None).context == 256
    with pytest.raises(ContextLengthError, match=r"--max-model-len 257 is above the model's context of 256"):
        memory_plan(config, torch.float32, 2, 257)
    demo = load_checkpoint(DEMO)
    with pytest.raises(ContextLengthError, match="256"):
        Engine(demo.model, demo.tokenizer, max_batch=2, max_seq_len=300)  # was silently capped


def test_a_model_over_the_limit_is_one_line_saying_what_to_lower() -> None:
    plan = MemoryPlan(8_000_000, torch.float32, 20_000_000, rows=17, context=256)
    check_fits(plan, None, CPU)  # no limit on a CPU: nothing to check
    check_fits(plan, 28_000_000, CPU)
    with pytest.raises(MemoryLimitError) as caught:
        check_fits(plan, 27_999_999, CPU)
    message = str(caught.value)
    assert "\n" not in message
    for part in ("28.0 MB", "weights 8.0 MB", "KV cache 20.0 MB", "17 rows x 256 tokens", "--memory-limit"):
        assert part in message
    assert "--max-model-len" in message and "--max-num-seqs" in message and "--dtype bfloat16" in message
    half = MemoryPlan(4_000_000, torch.bfloat16, 10_000_000, rows=17, context=256)
    with pytest.raises(MemoryLimitError) as caught:
        check_fits(half, 1_000_000, CPU)
    assert "--dtype" not in str(caught.value)  # bf16 already


def test_the_memory_check_comes_before_the_weights_are_read(tmp_path: Path) -> None:
    """load_checkpoint calls `before_weights` with the config before it reads the model file: here a file
    that is not a checkpoint at all is never read, since the check refuses first."""
    for path in DEMO.iterdir():
        if path.name.startswith(("meta_", "token")):
            (tmp_path / path.name).write_bytes(path.read_bytes())
    step = int(next(tmp_path.glob("meta_*.json")).stem.split("_")[1])
    (tmp_path / f"model_{step:06d}.pt").write_bytes(b"not read")

    def fits(config: GPTConfig) -> None:
        check_fits(memory_plan(config, torch.float32, 16, None), 1_000_000, CPU)

    with pytest.raises(MemoryLimitError, match="does not fit"):
        load_checkpoint(tmp_path, before_weights=fits)


def test_the_hf_engine_plans_its_weights_and_the_cache_it_reserves() -> None:
    engine = HFEngine.from_pretrained(demo_export(), max_batch=3, max_seq_len=64)
    memory = engine.memory
    assert memory.weights_bytes == module_bytes(engine.model) and memory.preallocated
    # the demo model exported: 3 layers, 2 key/value heads of 96, fp32; every row at the full context
    assert memory.kv_cache_bytes == 2 * 3 * 2 * 96 * 4 * 3 * 64 and (memory.rows, memory.context) == (3, 64)
    assert memory.kv_cache_bytes == engine.cache.nbytes and "not preallocated" not in memory.describe()
    with pytest.raises(MemoryLimitError, match="--memory-limit"):
        HFEngine.from_pretrained(demo_export(), max_batch=3, memory_limit=memory.weights_bytes)
    with pytest.raises(ContextLengthError, match="256"):
        HFEngine.from_pretrained(demo_export(), max_seq_len=257)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_devices_free_memory_bounds_the_plan_limit_or_not() -> None:
    free, _ = torch.cuda.mem_get_info()
    too_big = MemoryPlan(free, torch.bfloat16, free, rows=1, context=1)
    with pytest.raises(MemoryLimitError, match="free"):
        check_fits(too_big, None, torch.device("cuda"))
    check_fits(MemoryPlan(1000, torch.bfloat16, 1000, rows=1, context=1), None, torch.device("cuda"))
