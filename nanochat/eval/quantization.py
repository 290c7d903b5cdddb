"""`nanochat eval quantization`: what fp32, bf16 and int8 weights cost and change, as docs/quantization.md.

For each model (a checkpoint, and optionally a random-weight model of `--depth`) and each variant:
- bytes on disk (the state dict `torch.save` writes: int8 linears as int8 + a float32 scale per row) and in
  memory (`nanochat.memory.module_bytes`, what the engine's memory line reports);
- engine decode tokens/s at each batch, the variants interleaved in rounds (A/B/C/A/B/C) in one process,
  best round kept: a loaded machine slows them alike, so read the ratios more than the figures;
- bits per byte over held-out conversations (every token of the rendered conversation is a target), with
  `nanochat.eval.bpb.evaluate_bpb`;
- greedy top-1 agreement with fp32: fp32 writes `new_tokens` greedily after each held-out prompt; each variant
  reads the same text (teacher forcing) and the share of positions where its top-1 token equals fp32's is
  the figure, so one early difference does not spoil the rest;
- dollars per million tokens on one Cloud Run instance of the shape envs/prod.yaml deploys, at the measured
  decode rate (a bound: the service adds its own overhead).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from nanochat.backend import SamplingParams
from nanochat.bench import begin_all, decode_seconds
from nanochat.engine import Engine
from nanochat.eval import EvalError
from nanochat.eval.bpb import evaluate_bpb
from nanochat.gpt import GPT, GPTConfig
from nanochat.memory import format_bytes, module_bytes
from nanochat.prices import (
    CLOUD_RUN_GIB_SECOND,
    CLOUD_RUN_PRICES_URL,
    CLOUD_RUN_VCPU_SECOND,
    SIDECAR_GIB,
    SIDECAR_VCPU,
    cloud_run_price_per_hour,
    dollars_per_million_tokens,
)
from nanochat.quantize import Int8Linear, quantize_model
from nanochat.tokenizer import Tokenizer

VARIANTS = ("float32", "bfloat16", "int8")
# Cloud Run instance-based billing, us-central1 (Tier 1): the one price table, nanochat/prices.py
PRICES_URL = CLOUD_RUN_PRICES_URL


@dataclass(frozen=True)
class Options:
    batches: tuple[int, ...] = (1, 16, 64)
    tokens: int = 32  # decode steps timed per batch and round
    rounds: int = 3
    prompt_len: int = 32
    prompts: int = 32  # held-out prompts for agreement and bpb
    new_tokens: int = 32  # fp32's greedy tokens per prompt that agreement compares


@dataclass(frozen=True)
class CloudShape:
    """One Cloud Run instance: the app's vCPU and GiB (from an envs/*.yaml) plus the sidecar's."""

    source: str
    app_vcpu: float
    app_gib: float

    @property
    def price_per_hour(self) -> float:
        return cloud_run_price_per_hour(self.app_vcpu, self.app_gib)

    def dollars_per_million_tokens(self, tokens_per_s: float) -> float:
        return dollars_per_million_tokens(self.price_per_hour, tokens_per_s)


def cloud_shape(env_file: Path) -> CloudShape:
    """The service's cpu and memory in an envs/*.yaml (memory as `4Gi` or `512Mi`)."""
    import yaml

    service = yaml.safe_load(env_file.read_text())["service"]
    memory = str(service["memory"])
    if memory.endswith("Gi"):
        gib = float(memory.removesuffix("Gi"))
    else:
        gib = float(memory.removesuffix("Mi")) / 1024
    return CloudShape(str(env_file), float(service["cpu"]), gib)


def variant(build: Callable[[], GPT], name: str) -> GPT:
    """A fresh fp32 model from `build`, in bf16 or with int8 linears."""
    model = build()
    if name == "bfloat16":
        return model.to(torch.bfloat16).eval()
    if name == "int8":
        return quantize_model(model, "int8")
    return model.eval()


def random_model(depth: int, vocab_size: int, seed: int = 0) -> GPT:
    """A random-weight model of nanochat's depth rule, every matrix non-zero (nanochat's init zeroes the
    output projections and the head, which would make quantizing them trivially exact)."""
    model = GPT(GPTConfig.for_depth(depth, vocab_size, sequence_len=1024))
    generator = torch.Generator().manual_seed(seed)
    model.init_weights(generator)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                module.weight.normal_(0.0, module.weight.size(1) ** -0.5, generator=generator)
    return model.eval()


def disk_bytes(model: GPT) -> int:
    """What `torch.save` writes for the model's weights: int8 linears as int8 weight + float32 scales."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            qweight, _ = torch.ops.quantized.linear_unpack(module._packed)
            state[f"{name}.weight"] = qweight.int_repr()
            state[f"{name}.scale"] = qweight.q_per_channel_scales().float()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def heldout_conversations(path: Path, limit: int) -> list[dict]:
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise EvalError(f"cannot read held-out conversations {path}: {e.strerror}") from None
    conversations = [json.loads(line) for line in lines[:limit]]
    if not conversations:
        raise EvalError(f"no conversations in {path}")
    return conversations


def heldout_prompts(
    tokenizer: Tokenizer, conversations: list[dict], limit: int, context: int, new_tokens: int
) -> list[list[int]]:
    """The first `limit` conversations' prompts (the last assistant reply left to write) that leave room
    for `new_tokens` in `context`."""
    prompts = [tokenizer.render_for_completion(c) for c in conversations]
    return [p for p in prompts if len(p) + new_tokens <= context][:limit]


def reference_continuations(
    model: GPT, tokenizer: Tokenizer, prompts: list[list[int]], new_tokens: int
) -> list[list[int]]:
    """`model`'s greedy continuation of each prompt, `new_tokens` each (past any end token), all prompts
    decoded together by the engine."""
    longest = max(len(p) for p in prompts) + new_tokens
    engine = Engine(model, tokenizer, max_batch=len(prompts), max_seq_len=longest)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, tools=False)
    generations = begin_all(engine, prompts, params)
    while not all(g.done for g in generations):
        engine.decode_step()
    return [g.continuations[0].tokens[:new_tokens] for g in generations]


def greedy_agreement(model: GPT, prompts: list[list[int]], continuations: list[list[int]]) -> float:
    """Share of positions where `model`'s top-1 token, reading prompt + continuation, is the
    continuation's."""
    same = total = 0
    with torch.inference_mode():
        for prompt, continuation in zip(prompts, continuations, strict=True):
            ids = torch.tensor([prompt + continuation[:-1]])
            logits = model(ids)[0, len(prompt) - 1 :]
            same += int((logits.argmax(-1) == torch.tensor(continuation)).sum())
            total += len(continuation)
    return same / total


def heldout_bpb(model: GPT, tokenizer: Tokenizer, conversations: list[dict]) -> float:
    """Bits per byte over the rendered conversations, one at a time (every next token a target)."""
    context = model.config.sequence_len + 1
    batches = []
    for conversation in conversations:
        ids, _ = tokenizer.render_conversation(conversation, max_tokens=context)
        row = torch.tensor([ids])
        batches.append((row[:, :-1], row[:, 1:]))
    return evaluate_bpb(model, batches, tokenizer.token_bytes)


def decode_tokens_per_s(
    models: dict[str, GPT], tokenizer: Tokenizer, options: Options
) -> dict[str, dict[int, float]]:
    """Engine decode tokens/s (all rows) per variant and batch, interleaved rounds, best round kept."""
    longest = options.prompt_len + options.tokens + 2
    engines = {
        name: Engine(m, tokenizer, max_batch=max(options.batches), max_seq_len=longest)
        for name, m in models.items()
    }
    vocab = next(iter(models.values())).config.vocab_size
    generator = torch.Generator().manual_seed(0)
    best: dict[str, dict[int, float]] = {name: {} for name in models}
    for batch in options.batches:
        prompts = [
            torch.randint(0, vocab - 16, (options.prompt_len,), generator=generator).tolist()
            for _ in range(batch)
        ]
        for _ in range(options.rounds):
            for name, engine in engines.items():
                seconds = decode_seconds(engine, prompts, options.tokens)
                rate = batch * options.tokens / seconds
                best[name][batch] = max(best[name].get(batch, 0.0), rate)
    return best


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_model(
    title: str,
    build: Callable[[], GPT],
    tokenizer: Tokenizer,
    conversations: list[dict],
    options: Options,
    shape: CloudShape,
) -> dict:
    """Every figure of one model's three variants (see the module docstring)."""
    models = {name: variant(build, name) for name in VARIANTS}
    context = models["float32"].config.sequence_len
    prompts = heldout_prompts(tokenizer, conversations, options.prompts, context, options.new_tokens)
    progress(f"{title}: fp32's greedy continuations of {len(prompts)} prompts")
    reference = reference_continuations(models["float32"], tokenizer, prompts, options.new_tokens)
    progress(f"{title}: decode tok/s at batches {options.batches}")
    speed = decode_tokens_per_s(models, tokenizer, options)
    progress(f"{title}: bytes, bpb and agreement")
    rows = {}
    for name, model in models.items():
        rows[name] = {
            "disk_bytes": disk_bytes(model),
            "memory_bytes": module_bytes(model),
            "decode_tokens_per_s": {str(b): round(speed[name][b], 1) for b in options.batches},
            "bpb": round(heldout_bpb(model, tokenizer, conversations), 4),
            "agreement": round(greedy_agreement(model, prompts, reference), 4),
            "dollars_per_million_tokens": {
                str(b): round(shape.dollars_per_million_tokens(speed[name][b]), 4) for b in options.batches
            },
        }
    config = models["float32"].config
    return {
        "title": title,
        "model": {**config.to_dict(), "parameters": models["float32"].num_parameters()},
        "variants": rows,
    }


def render_markdown(results: list[dict], options: Options, shape: CloudShape, context: dict) -> str:
    """docs/quantization.md from `measure_model`'s results."""
    lines = [
        "# Quantization: fp32, bf16 and int8 weights",
        "",
        "Generated by `nanochat eval quantization` (nanochat/eval/quantization.py); do not edit by hand.",
        f"Command: `{context['command']}`. Machine: {context['machine']}.",
        "",
        "How to read it: tok/s is engine decode (all rows together) at each batch, the three variants "
        f"interleaved in {options.rounds} rounds of {options.tokens} steps in one process, best round kept; "
        "on a shared, loaded machine the figures move, their ratios less. bpb: bits per byte over "
        f"{context['conversations']} held-out conversations ({context['heldout']}; no validation shard "
        "ships with the repository). Agreement: the share of positions where the variant's top-1 token "
        f"equals fp32's, reading fp32's own greedy continuation ({options.new_tokens} tokens) of "
        f"{options.prompts} held-out prompts. Disk: `torch.save` of the weights (int8 linears as int8 plus "
        "a float32 scale per row); memory: what the engine's memory line and `/stats` report.",
        "",
        f"Dollars per million tokens: one Cloud Run instance of {shape.source} ({shape.app_vcpu:g} vCPU and "
        f"{shape.app_gib:g} GiB for the app, plus the sidecar's {SIDECAR_VCPU} vCPU and {SIDECAR_GIB:g} "
        f"GiB), instance-based billing, ${CLOUD_RUN_VCPU_SECOND:.6f} per vCPU-second and "
        f"${CLOUD_RUN_GIB_SECOND:.6f} per GiB-second (us-central1, Tier 1, as listed on {PRICES_URL} and "
        f"in docs/infra.md): ${shape.price_per_hour:.4f} an hour, divided by the decode rate above. A "
        "floor: the service's own work per token and idle time cost more.",
        "",
    ]
    for result in results:
        model = result["model"]
        lines += [
            f"## {result['title']}",
            "",
            f"{model['n_layer']} layers x {model['n_embd']} wide, {model['n_head']} heads, vocabulary "
            f"{model['vocab_size']}, {model['parameters']:,} parameters.",
            "",
        ]
        header = ["variant", "disk", "memory", "bpb", "agreement vs fp32"]
        header += [f"tok/s b{b}" for b in options.batches] + [f"$/M tok b{b}" for b in options.batches]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        fp32 = result["variants"]["float32"]
        for name, row in result["variants"].items():
            speeds = []
            for b in options.batches:
                rate = row["decode_tokens_per_s"][str(b)]
                ratio = rate / fp32["decode_tokens_per_s"][str(b)]
                speeds.append(f"{rate:,.0f} ({ratio:.2f}x)")
            cells = [
                name,
                f"{format_bytes(row['disk_bytes'])} ({row['disk_bytes'] / fp32['disk_bytes']:.2f}x)",
                f"{format_bytes(row['memory_bytes'])} ({row['memory_bytes'] / fp32['memory_bytes']:.2f}x)",
                f"{row['bpb']:.4f}",
                f"{row['agreement']:.1%}",
                *speeds,
                *(f"${row['dollars_per_million_tokens'][str(b)]:.3f}" for b in options.batches),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Figures (JSON)", "", "```json", json.dumps(results, indent=2), "```", ""]
    return "\n".join(lines)
