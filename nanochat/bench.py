"""Engine throughput, measured against a baseline in the same process.

Figures: prefill tokens/s (batch 1), decode tokens/s at batch 1, and aggregate decode tokens/s at larger
batches of mixed-length prompts (each request decoding at its own position, as the service runs them);
with `compile`, the same decode figures for the compiled step (nanochat.compiled), interleaved with the
eager ones.
The baseline is Hugging Face `transformers` `generate()` on a Llama model of the same width, depth, heads
and vocabulary (random weights, MLP sized to the same parameter count), timed on the same prompt. Each
figure is the best of a few repeats, to damp a shared, noisy machine. Results are ratios, never asserts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from nanochat.engine import Engine, SamplingParams
from nanochat.gpt import GPT
from nanochat.tokenizer import Tokenizer

TARGET_BATCH1_VS_HF = 1.0
TARGET_BATCH16_VS_BATCH1 = 6.0


def _best_seconds(fn: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _prompt(length: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab - 16, (length,), generator=g).tolist()


def begin_all(engine, prompts: list[list[int]], params: SamplingParams) -> list:
    """One generation per prompt on any engine of the backend protocol, each prefilled to its end."""
    generations = []
    for prompt in prompts:
        generation = engine.begin(prompt, params)
        while generation.prefill_remaining:
            engine.prefill(generation)
        generations.append(generation)
    return generations


def decode_seconds(engine, prompts: list[list[int]], steps: int) -> float:
    """Time `steps` batched decode steps over one row per prompt, after prefilling every prompt (prefill
    not timed); greedy, past any end token, no tool calls. Any engine of the backend protocol."""
    params = SamplingParams(max_tokens=steps + 1, temperature=0.0, ignore_eos=True, tools=False)
    generations = begin_all(engine, prompts, params)
    start = time.perf_counter()
    for _ in range(steps):
        engine.decode_step()
    seconds = time.perf_counter() - start
    for generation in generations:
        engine.cancel(generation)
    return seconds


def _prefill_seconds(engine: Engine, prompt: list[int]) -> float:
    params = SamplingParams(max_tokens=1, temperature=0.0, tools=False)
    start = time.perf_counter()
    request = engine.begin(prompt, params)
    while request.prefill_remaining:
        engine.prefill(request, max_tokens=len(prompt))
    seconds = time.perf_counter() - start
    engine.cancel(request)
    return seconds


def hf_baseline_model(model: GPT):
    """A random-weight Llama of the same shape, or None when transformers is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    c = model.config
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        intermediate_size=(8 * c.n_embd) // 3,  # gated MLP with 3 matrices ≈ relu² MLP with 2 at 4x
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        max_position_embeddings=c.sequence_len * 2,
        tie_word_embeddings=False,
    )
    dtype = next(model.parameters()).dtype
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def _hf_generate_seconds(hf_model, prompt: list[int], new_tokens: int) -> float:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    return time.perf_counter() - start


def run_benchmark(
    model: GPT,
    tokenizer: Tokenizer,
    batches: tuple[int, ...] = (4, 16, 64),
    prompt_len: int = 64,
    decode_steps: int = 32,
    repeats: int = 3,
    with_hf: bool = True,
    compile: bool = False,
) -> dict:
    """All figures as a JSON-able dict (see the module docstring). `compile`: decode figures of an engine
    with the compiled decode step too, interleaved with the eager one's, and their ratios."""
    c = model.config
    vocab = c.vocab_size
    max_batch = max((1, *batches))
    longest = 2 * prompt_len + decode_steps + 2
    if longest > c.sequence_len:
        prompt_len = max(4, (c.sequence_len - decode_steps - 2) // 2)
        longest = 2 * prompt_len + decode_steps + 2
    engine = Engine(model, tokenizer, max_batch=max_batch, max_seq_len=longest)
    compiled = Engine(model, tokenizer, max_batch, longest, compile=True) if compile else None

    prompt = _prompt(prompt_len, vocab, 0)
    _prefill_seconds(engine, prompt)  # warm-up
    decode_seconds(engine, [prompt], 4)
    prefill_s = _best_seconds(lambda: _prefill_seconds(engine, prompt), repeats)

    decode: dict[int, float] = {}
    decode_compiled: dict[int, float] = {}
    for batch in (1, *batches):
        # mixed lengths: prompt_len/2 .. 3·prompt_len/2, so rows decode at different positions
        lengths = [prompt_len // 2 + (i * prompt_len) // max(batch, 1) for i in range(batch)]
        prompts = [_prompt(n, vocab, i) for i, n in enumerate(lengths)]
        eager_s, compiled_s = float("inf"), float("inf")
        for _ in range(repeats):  # interleaved, so both see the same noise
            eager_s = min(eager_s, decode_seconds(engine, prompts, decode_steps))
            if compiled is not None:
                compiled_s = min(compiled_s, decode_seconds(compiled, prompts, decode_steps))
        decode[batch] = batch * decode_steps / eager_s
        decode_compiled[batch] = batch * decode_steps / compiled_s

    result: dict = {
        "model": {
            **c.to_dict(),
            "parameters": model.num_parameters(),
            "dtype": str(next(model.parameters()).dtype),
        },
        "threads": torch.get_num_threads(),
        "prompt_len": prompt_len,
        "decode_steps": decode_steps,
        "prefill_tokens_per_s": round(prompt_len / prefill_s, 1),
        "decode_batch1_tokens_per_s": round(decode[1], 1),
        "decode_aggregate_tokens_per_s": {str(b): round(decode[b], 1) for b in batches},
        "ratios": {f"batch{b}_vs_batch1": round(decode[b] / decode[1], 2) for b in batches},
    }
    if compiled is not None:
        result["compiled"] = {
            "failed": compiled.compiled.failed,
            "buckets": list(compiled.compiled.buckets),
            "decode_tokens_per_s": {str(b): round(t, 1) for b, t in decode_compiled.items()},
            "ratios": {
                f"batch{b}_compiled_vs_eager": round(decode_compiled[b] / d, 2) for b, d in decode.items()
            },
        }
    if 16 in decode:
        result["targets"] = {"batch16_vs_batch1": TARGET_BATCH16_VS_BATCH1}

    hf_model = hf_baseline_model(model) if with_hf else None
    if hf_model is None:
        result["transformers"] = {"skipped": "transformers not installed" if with_hf else "disabled"}
        return result
    import transformers

    _hf_generate_seconds(hf_model, prompt, 2)  # warm-up
    one = _best_seconds(lambda: _hf_generate_seconds(hf_model, prompt, 1), repeats)
    full = _best_seconds(lambda: _hf_generate_seconds(hf_model, prompt, decode_steps + 1), repeats)
    hf_decode = decode_steps / max(full - one, 1e-9)
    hf_prefill = prompt_len / one
    result["transformers"] = {
        "version": transformers.__version__,
        "model": "LlamaForCausalLM (random weights, same width/depth/heads/vocab)",
        "parameters": sum(p.numel() for p in hf_model.parameters()),
        "prefill_tokens_per_s": round(hf_prefill, 1),
        "decode_batch1_tokens_per_s": round(hf_decode, 1),
    }
    result["ratios"]["batch1_vs_transformers"] = round(decode[1] / hf_decode, 2)
    result["ratios"]["prefill_vs_transformers"] = round(result["prefill_tokens_per_s"] / hf_prefill, 2)
    result.setdefault("targets", {})["batch1_vs_transformers"] = TARGET_BATCH1_VS_HF
    return result


def _train_steps_seconds(step: Callable[[], None], steps: int, repeats: int) -> float:
    step()  # warm-up (allocations, optimizer state)
    return _best_seconds(lambda: [step() for _ in range(steps)], repeats) / steps


def _matmul_flops_per_second(size: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 GEMM throughput of this machine: the 'peak' that CPU model FLOPs utilisation uses."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = _best_seconds(lambda: a @ b, repeats)
    return 2 * size**3 / seconds


def run_train_benchmark(
    depth: int = 3,
    vocab_size: int = 2048,
    seq_len: int = 256,
    batch_size: int = 16,
    steps: int = 5,
    repeats: int = 3,
    with_hf: bool = True,
) -> dict:
    """Training tokens/s of our model + optimizers vs transformers' Llama + AdamW of the same shape."""
    from nanochat.gpt import GPTConfig
    from nanochat.train.common import flops_per_token
    from nanochat.train.optim import build_optimizers

    config = GPTConfig.for_depth(depth, vocab_size, seq_len)
    model = GPT(config)
    model.init_weights(torch.Generator().manual_seed(0))
    optimizers = build_optimizers(model)
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, vocab_size, (batch_size, seq_len), generator=g)
    targets = torch.randint(0, vocab_size, (batch_size, seq_len), generator=g)

    def ours() -> None:
        model(inputs, targets).backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

    seconds = _train_steps_seconds(ours, steps, repeats)
    tokens = batch_size * seq_len
    flops = flops_per_token(model)
    peak = _matmul_flops_per_second()
    result: dict = {
        "model": {**config.to_dict(), "parameters": model.num_parameters()},
        "threads": torch.get_num_threads(),
        "batch": [batch_size, seq_len],
        "train_tokens_per_s": round(tokens / seconds, 1),
        "model_flops_per_s": round(flops * tokens / seconds / 1e9, 2),  # GFLOP/s
        "measured_fp32_gemm_flops_per_s": round(peak / 1e9, 2),  # GFLOP/s
        "mfu_vs_measured_gemm": round(flops * tokens / seconds / peak, 3),
    }
    hf_model = hf_baseline_model(model) if with_hf else None
    if hf_model is None:
        result["transformers"] = {"skipped": "transformers not installed" if with_hf else "disabled"}
        return result
    hf_model.train()
    hf_optimizer = torch.optim.AdamW(hf_model.parameters(), lr=1e-3)

    def theirs() -> None:
        hf_model(input_ids=inputs, labels=targets).loss.backward()
        hf_optimizer.step()
        hf_optimizer.zero_grad(set_to_none=True)

    hf_seconds = _train_steps_seconds(theirs, steps, repeats)
    result["transformers"] = {
        "model": "LlamaForCausalLM + torch AdamW (random weights, same width/depth/heads/vocab)",
        "train_tokens_per_s": round(tokens / hf_seconds, 1),
    }
    result["ratios"] = {"train_vs_transformers": round(hf_seconds / seconds, 2)}
    return result
