"""Fine-tune a Hugging Face causal LM on chat conversations with `transformers.Trainer`: `nanochat hf ...`.

- `finetune --method full`: every weight trains (AdamW, linear decay), the result is a model folder;
- `finetune --method lora`: `peft` LoRA adapters on the attention and MLP projections; only the adapters
  are saved (`adapter_config.json` + `adapter_model.safetensors`), the base model stays as it is;
- `merge`: base + adapter -> one plain model folder (`merge_and_unload`), loadable without peft;
- `compare`: from one nanochat base checkpoint, the same data and the same number of steps, full
  fine-tuning vs LoRA vs nanochat's own `train sft`; one report with eval loss (all three measured the same
  way, through transformers), trainable parameters, time and peak memory.

Conversations are JSONL as for `nanochat train sft`. They are rendered with the tokenizer's chat template;
with `{% generation %}` marks (the nanochat export has them) only the assistant's tokens are trained on,
exactly as nanochat's SFT does, otherwise every token is. Batches are right-padded; padding never trains.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nanochat.cliargs import positive_int
from nanochat.data.conversations import load_conversations

IGNORE_INDEX = -100  # transformers' label for "no loss here"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")


class FinetuneError(ValueError):
    """Bad fine-tuning input or settings; the message says what to fix."""


@dataclass
class FinetuneConfig:
    model: str  # Hugging Face model folder
    train: str  # conversations JSONL
    out: str  # output folder (model, or adapter for LoRA)
    val: str = ""
    method: str = "full"  # full | lora
    steps: int = 100
    batch_size: int = 8
    learning_rate: float = 0.0  # 0: 1e-3 for full, 5e-3 for LoRA (tiny models; lower for big ones)
    lora_rank: int = 8
    lora_alpha: int = 16
    max_len: int = 0  # 0: the model's context
    seed: int = 42
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("full", "lora"):
            raise FinetuneError(f"method must be full or lora, got {self.method!r}")
        for name in ("steps", "batch_size", "lora_rank", "lora_alpha"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate < 0:
            raise FinetuneError(f"learning_rate must be >= 0, got {self.learning_rate}")

    @property
    def lr(self) -> float:
        return self.learning_rate or (1e-3 if self.method == "full" else 5e-3)


@dataclass
class FinetuneResult:
    out: str
    method: str
    steps: int
    trainable_parameters: int
    total_parameters: int
    train_seconds: float
    peak_memory_mb: float | None
    eval_loss_before: float | None
    eval_loss_after: float | None
    train_losses: list[float] = field(default_factory=list)


# ---- data -----------------------------------------------------------------------------------------
def chat_examples(tokenizer: Any, path: str | os.PathLike[str], max_len: int) -> list[dict[str, list[int]]]:
    """input_ids + labels per conversation (labels IGNORE_INDEX where the assistant does not write)."""
    marks = bool(re.search(r"{%-?\s*generation\s*-?%}", tokenizer.chat_template or ""))
    if not tokenizer.chat_template:
        raise FinetuneError("the model's tokenizer has no chat template; conversations cannot be rendered")
    examples = []
    for conversation in load_conversations(path):
        out = tokenizer.apply_chat_template(
            conversation["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=marks
        )
        ids = list(out["input_ids"])[:max_len]
        mask = list(out["assistant_masks"])[:max_len] if marks else [1] * len(ids)
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
        if any(label != IGNORE_INDEX for label in labels[1:]):  # truncation can drop every target
            examples.append({"input_ids": ids, "labels": labels})
    if not examples:
        raise FinetuneError(f"{path}: no conversation has assistant tokens to train on")
    return examples


def collate(pad_id: int):
    def pad(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[row, :n] = torch.tensor(e["input_ids"])
            labels[row, :n] = torch.tensor(e["labels"])
            attention[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": attention}

    return pad


@torch.inference_mode()
def eval_loss(model: Any, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy per trained (assistant) token: the same number for every method."""
    model.eval()
    total, count = 0.0, 0
    pad = collate(pad_id)
    for start in range(0, len(examples), batch_size):
        batch = pad(examples[start : start + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        targets = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += loss.item()
        count += int((targets != IGNORE_INDEX).sum())
    return total / max(count, 1)


# ---- memory ---------------------------------------------------------------------------------------
@contextmanager
def peak_memory():
    """Yields a dict that gets "mb": the peak memory while the block ran (CUDA: allocated tensors; CPU:
    the process's peak resident set, reset first through /proc/self/clear_refs; None where unavailable)."""
    result: dict[str, float | None] = {"mb": None}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        with suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    yield result
    if cuda:
        result["mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        try:
            status = Path("/proc/self/status").read_text()
            result["mb"] = round(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024, 1)
        except (OSError, AttributeError):
            pass


# ---- training -------------------------------------------------------------------------------------
def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Full or LoRA fine-tuning with Trainer; writes the model (or adapter) and tokenizer to config.out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    folder = Path(config.model)
    if not (folder / "config.json").is_file():
        raise FinetuneError(f"{folder} is not a Hugging Face model folder (no config.json)")
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    max_len = config.max_len or getattr(model.config, "max_position_embeddings", 2048)
    train = chat_examples(tokenizer, config.train, max_len)
    val = chat_examples(tokenizer, config.val, max_len) if config.val else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    before = eval_loss(model, val, pad_id) if val else None
    total = sum(p.numel() for p in model.parameters())
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = [t for t in LORA_TARGETS if any(n.endswith(t) for n, _ in model.named_modules())]
        lora = LoraConfig(
            r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=targets,
            task_type="CAUSAL_LM",
        )  # fmt: skip
        model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    args = TrainingArguments(
        output_dir=str(Path(config.out) / ".trainer"),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=max(1, config.steps // 20),
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        use_cpu=config.device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=not config.progress,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate(pad_id))
    if not config.progress:
        trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is off
    with peak_memory() as memory:
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    losses = [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e]
    after = eval_loss(model, val, pad_id) if val else None
    out = Path(config.out)
    shutil.rmtree(out / ".trainer", ignore_errors=True)  # Trainer's scratch folder (nothing is saved there)
    model.save_pretrained(out)  # peft saves only the adapter
    tokenizer.save_pretrained(out)
    result = FinetuneResult(
        str(out),
        config.method,
        config.steps,
        trainable,
        total,
        round(seconds, 2),
        memory["mb"],
        before,
        after,
        losses,
    )
    (out / "finetune.json").write_text(
        json.dumps({"config": asdict(config), "result": asdict(result)}, indent=2)
    )
    return result


def merge_lora(
    base: str | os.PathLike[str], adapter: str | os.PathLike[str], out: str | os.PathLike[str]
) -> Path:
    """base model + LoRA adapter -> a plain model folder with the adapter folded into the weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FinetuneError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    return Path(out)


# ---- full vs LoRA vs nanochat SFT -----------------------------------------------------------------
def compare(
    base_checkpoint: str,
    train: str,
    val: str,
    out: str | os.PathLike[str],
    steps: int = 100,
    batch_size: int = 8,
    sft_init_lr_frac: float = 0.1,
) -> dict[str, Any]:
    """Fine-tune one nanochat base model three ways on the same data; report.json + report.md in `out`.

    nanochat's SFT runs with its own optimizers and learning rates scaled by `sft_init_lr_frac` (0.1 is
    the demo model's recipe, docs/experiments/demo.toml); Trainer runs use AdamW at FinetuneConfig.lr."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nanochat.hf_export import export_hf
    from nanochat.train.distributed import init_distributed
    from nanochat.train.sft import SFTConfig, train_sft

    out = Path(out)
    base_hf = out / "base-hf"
    export_hf(base_checkpoint, base_hf)
    runs: dict[str, dict[str, Any]] = {}
    for method in ("full", "lora"):
        config = FinetuneConfig(str(base_hf), train, str(out / method), val, method, steps, batch_size)
        runs[method] = asdict(finetune(config)) | {"learning_rate": f"AdamW {config.lr:g}"}

    sft_dir = out / "nanochat-sft"
    sft_config = SFTConfig(
        checkpoint=base_checkpoint, train=train, out=str(sft_dir), val=val, num_iterations=steps,
        device_batch_size=batch_size, eval_every=0, progress=False, device="cpu",
        init_lr_frac=sft_init_lr_frac,
    )  # fmt: skip
    with peak_memory() as memory:
        summary = train_sft(sft_config, init_distributed("cpu"))
    sft_hf = out / "nanochat-sft-hf"
    export_hf(sft_dir, sft_hf)
    tokenizer = AutoTokenizer.from_pretrained(base_hf)
    sft_model = AutoModelForCausalLM.from_pretrained(sft_hf, dtype=torch.float32)
    examples = chat_examples(tokenizer, val, sft_model.config.max_position_embeddings)  # as finetune cuts
    pad_id = tokenizer.pad_token_id
    total = sum(p.numel() for p in sft_model.parameters())
    runs["nanochat-sft"] = {
        "out": str(sft_dir),
        "method": "nanochat train sft",
        "learning_rate": f"Muon + AdamW, recipe x {sft_init_lr_frac:g}",
        "steps": steps,
        "trainable_parameters": total,
        "total_parameters": total,
        "train_seconds": summary["training_seconds"],
        "peak_memory_mb": memory["mb"],
        "eval_loss_before": runs["full"]["eval_loss_before"],
        "eval_loss_after": eval_loss(sft_model, examples, pad_id),
        "train_losses": [],
    }
    report = {"base_checkpoint": base_checkpoint, "train": train, "val": val, "steps": steps,
              "batch_size": batch_size, "runs": runs}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(compare_markdown(report))
    return report


def compare_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Fine-tuning: full vs LoRA vs nanochat SFT",
        "",
        f"Base: `{report['base_checkpoint']}`; data: `{report['train']}`; {report['steps']} steps of "
        f"{report['batch_size']} conversations each. Eval: mean cross-entropy per assistant token on "
        f"`{report['val']}`, every model measured through transformers (lower is better).",
        "",
        "| method | optimizer, lr | eval loss before | after | trainable | share | train s | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["runs"].items():
        share = r["trainable_parameters"] / r["total_parameters"]
        memory = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        lines.append(
            f"| {name} | {r['learning_rate']} | {r['eval_loss_before']:.4f} | {r['eval_loss_after']:.4f} | "
            f"{r['trainable_parameters']:,} | {share:.1%} | {r['train_seconds']:.1f} | {memory} |"
        )
    lines += [
        "",
        "Peak memory is the process's peak resident set during training on CPU (it includes the Python "
        "runtime and libraries, so differences matter more than absolute values).",
        "",
    ]
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------------
def register(subparsers: Any) -> argparse.ArgumentParser:
    hf = subparsers.add_parser("hf", help="Hugging Face transformers: fine-tune, LoRA, merge, compare")
    commands = hf.add_subparsers(dest="hf_command", required=True, parser_class=type(hf))

    ft = commands.add_parser("finetune", help="Trainer fine-tuning on conversations (full or LoRA)")
    ft.add_argument(
        "--model", required=True, metavar="DIR", help="transformers model folder (e.g. an export)"
    )
    ft.add_argument("--train", required=True, help="conversations JSONL")
    ft.add_argument("--val", default="", help="held-out conversations JSONL (eval loss before/after)")
    ft.add_argument("--out", required=True, metavar="DIR", help="output folder (the adapter, for LoRA)")
    ft.add_argument("--method", choices=("full", "lora"), default="full", help="default full")
    ft.add_argument("--steps", type=positive_int, default=100, help="optimizer steps (default 100)")
    ft.add_argument("--batch-size", type=positive_int, default=8, help="conversations per step (default 8)")
    ft.add_argument("--learning-rate", type=float, default=0.0, help="default 1e-3 full, 5e-3 LoRA")
    ft.add_argument("--lora-rank", type=positive_int, default=8, help="LoRA rank (default 8)")
    ft.add_argument("--seed", type=int, default=42)
    ft.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ft.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    ft.set_defaults(handler=cmd_finetune)

    merge = commands.add_parser("merge", help="fold a LoRA adapter into its base model")
    merge.add_argument("--base", required=True, metavar="DIR", help="the base model folder")
    merge.add_argument("--adapter", required=True, metavar="DIR", help="the adapter folder")
    merge.add_argument("--out", required=True, metavar="DIR", help="folder for the merged model")
    merge.set_defaults(handler=cmd_merge)

    cmp = commands.add_parser("compare", help="full vs LoRA vs nanochat SFT from one base checkpoint")
    cmp.add_argument("--checkpoint", required=True, metavar="DIR", help="nanochat base checkpoint folder")
    cmp.add_argument("--train", required=True, help="conversations JSONL")
    cmp.add_argument("--val", required=True, help="held-out conversations JSONL")
    cmp.add_argument("--out", required=True, metavar="DIR", help="run folder (report.md, report.json)")
    cmp.add_argument("--steps", type=positive_int, default=100, help="steps per method (default 100)")
    cmp.add_argument("--batch-size", type=positive_int, default=8, help="conversations per step (default 8)")
    cmp.add_argument("--sft-init-lr-frac", type=float, default=0.1, help="nanochat SFT's (default 0.1)")
    cmp.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    cmp.set_defaults(handler=cmd_compare)
    return hf


def cmd_finetune(args: argparse.Namespace) -> int:
    config = FinetuneConfig(
        args.model, args.train, args.out, args.val, args.method, args.steps, args.batch_size,
        args.learning_rate, args.lora_rank, 2 * args.lora_rank, seed=args.seed, device=args.device,
    )  # fmt: skip
    r = finetune(config)
    loss = (
        ""
        if r.eval_loss_after is None
        else f", eval loss {r.eval_loss_before:.4f} -> {r.eval_loss_after:.4f}"
    )
    print(
        f"hf finetune ({r.method}): {r.trainable_parameters:,} trainable parameters, {r.train_seconds}s{loss}"
    )
    print(f"-> {r.out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    print(f"hf merge: -> {merge_lora(args.base, args.adapter, args.out)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    compare(
        args.checkpoint, args.train, args.val, args.out, args.steps, args.batch_size, args.sft_init_lr_frac
    )
    print(f"hf compare: -> {Path(args.out) / 'report.md'}")
    return 0
