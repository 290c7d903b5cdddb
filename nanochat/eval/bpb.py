"""Validation bits per byte, as nanochat reports it, and a unigram baseline to read it against.

Bits per byte divides the loss by the UTF-8 bytes the target tokens stand for, so that models with
different tokenizers compare fairly: the per-token cross-entropy (nats) summed over the targets that are
text, divided by ln 2 × the total bytes of those targets. A target of -1 (ignored) and a special token
(0 bytes in `token_bytes`, e.g. <|bos|>) count neither in the loss nor in the bytes.

`shard_bpb` evaluates on the validation shard of a shard folder with the training loop's own loader, so
its number and the val_bpb logged in training agree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from nanochat.data.shards import list_shards, num_row_groups, read_row_group
from nanochat.eval import EvalError
from nanochat.tokenizer import Tokenizer


def evaluate_bpb(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], token_bytes: torch.Tensor
) -> float:
    """Bits per byte of `model` over (inputs, targets) batches of shape (batch, time).

    The model is called as `model(inputs, targets, loss_reduction="none")` and must return one loss per
    target (nanochat's GPT does). Runs under `torch.inference_mode` with the model in eval mode (its mode
    is restored afterwards) and in whatever autocast context the caller set, or none. When
    torch.distributed is initialised, the sums are added across ranks, so every rank gets the same result.
    """
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    if config is not None and token_bytes.numel() != config.vocab_size:
        raise EvalError(
            f"token_bytes has {token_bytes.numel()} entries but the model's vocabulary is "
            f"{config.vocab_size}; use the token_bytes of the model's own tokenizer"
        )
    token_bytes = token_bytes.to(device=device, dtype=torch.long)
    accumulate = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    total_nats = torch.zeros((), dtype=accumulate, device=device)
    total_bytes = torch.zeros((), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for inputs, targets in batches:
                inputs, targets = inputs.to(device), targets.to(device)
                losses = model(inputs, targets, loss_reduction="none").reshape(-1)
                flat = targets.reshape(-1)
                num_bytes = torch.where(flat >= 0, token_bytes[flat.clamp(min=0)], 0)
                total_nats += torch.where(num_bytes > 0, losses.to(accumulate), 0).sum()
                total_bytes += num_bytes.sum()
    finally:
        model.train(was_training)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total_nats)
        torch.distributed.all_reduce(total_bytes)
    if total_bytes.item() == 0:
        raise EvalError("no target token with text bytes to evaluate (empty batches, or only -1/special)")
    return total_nats.item() / (math.log(2) * total_bytes.item())


def unigram_bpb(
    token_ids_train: torch.Tensor | Iterable[int] | Iterable[torch.Tensor],
    token_ids_val: Iterable[int] | torch.Tensor,
    token_bytes: torch.Tensor,
    vocab_size: int,
    smoothing: float = 1.0,
) -> float:
    """Bits per byte on `token_ids_val` of a unigram model fit on `token_ids_train`.

    p(t) = (count(t) + smoothing) / (N + smoothing × vocab_size) over the whole vocabulary (special tokens
    included, as a language model has to predict them too); the val tokens are scored with the same byte
    accounting as `evaluate_bpb`. Negative ids are ignored in both. The train ids may come as one tensor,
    ints, or a stream of tensors (counted chunk by chunk, so a large training set need not fit in memory).
    A model that has learnt anything beyond token frequencies beats this number.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise EvalError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if token_bytes.numel() != vocab_size:
        raise EvalError(f"token_bytes has {token_bytes.numel()} entries, vocab_size is {vocab_size}")
    if not smoothing > 0:
        raise EvalError(f"smoothing must be > 0 (an unseen token would cost infinite bits), got {smoothing}")
    counts = _train_counts(token_ids_train, vocab_size)
    val = _token_ids(token_ids_val, vocab_size, "val")
    log2_probs = torch.log2((counts + smoothing) / (counts.sum() + smoothing * vocab_size))
    num_bytes = token_bytes.long()[val]
    total_bytes = int(num_bytes.sum())
    if total_bytes == 0:
        raise EvalError("the val tokens hold no text bytes (empty, or only special tokens)")
    bits = -torch.where(num_bytes > 0, log2_probs[val], 0.0).sum().item()
    return bits / total_bytes


def _train_counts(
    ids: torch.Tensor | Iterable[int] | Iterable[torch.Tensor], vocab_size: int
) -> torch.Tensor:
    """Occurrences of each token id (float64 [vocab_size]) in a tensor, ints, or tensor chunks."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    loose: list[int] = []
    for item in [ids] if isinstance(ids, torch.Tensor) else ids:
        if isinstance(item, torch.Tensor):
            counts += torch.bincount(_token_ids(item, vocab_size, "train"), minlength=vocab_size)
        else:
            loose.append(item)
    if loose:
        counts += torch.bincount(_token_ids(loose, vocab_size, "train"), minlength=vocab_size)
    return counts


def _token_ids(ids: Iterable[int] | torch.Tensor, vocab_size: int, name: str) -> torch.Tensor:
    """A flat long tensor of the non-negative ids, checked against the vocabulary."""
    tensor = ids if isinstance(ids, torch.Tensor) else torch.tensor(list(ids), dtype=torch.long)
    tensor = tensor.reshape(-1).long().cpu()
    tensor = tensor[tensor >= 0]
    if tensor.numel() and int(tensor.max()) >= vocab_size:
        raise EvalError(f"{name} token id {int(tensor.max())} is outside the vocabulary of {vocab_size}")
    return tensor


def shard_bpb(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    data_dir: str | Path,
    batch_size: int = 8,
    seq_len: int | None = None,
    max_batches: int | None = None,
    unigram: bool = False,
) -> dict[str, Any]:
    """Bits per byte on the last shard of `data_dir` (and, with `unigram`, the unigram baseline fit on the
    other shards and scored on exactly the same targets)."""
    from nanochat.train.dataloader import TokenDataLoader  # training imports this module

    shards = list_shards(data_dir)
    train_shards, val_shard = shards[:-1], shards[-1]
    seq_len = seq_len or model.config.sequence_len
    loader = TokenDataLoader(
        [val_shard], tokenizer, batch_size, seq_len, device=next(model.parameters()).device, loop=False
    )
    stream = itertools.islice(loader, max_batches)
    first = next(stream, None)
    if first is None:
        raise EvalError(
            f"{val_shard} holds fewer than {batch_size * seq_len + 1} tokens, not one batch of "
            f"{batch_size}x{seq_len}; lower --batch-size or --seq-len"
        )
    targets: list[torch.Tensor] = []

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, batch_targets in itertools.chain([first], stream):
            targets.append(batch_targets.cpu())
            yield inputs, batch_targets

    result: dict[str, Any] = {"bpb": evaluate_bpb(model, batches(), tokenizer.token_bytes)}
    result.update(val_shard=str(val_shard), batches=len(targets), tokens=len(targets) * batch_size * seq_len)
    if unigram:
        if not train_shards:
            raise EvalError(f"--unigram fits on the shards before the last one, and {data_dir} has only one")
        result["unigram_bpb"] = unigram_bpb(
            _document_tokens(train_shards, tokenizer),
            torch.cat(targets),
            tokenizer.token_bytes,
            tokenizer.vocab_size,
        )
        result["unigram_fit_shards"] = len(train_shards)
    return result


def _document_tokens(shards: list[Path], tokenizer: Tokenizer) -> Iterator[torch.Tensor]:
    """The token ids of every document ([<|bos|>] + tokens), one tensor per row group."""
    bos = tokenizer.get_bos_token_id()
    for shard in shards:
        for group in range(num_row_groups(shard)):
            encoded = tokenizer.encode(read_row_group(shard, group), prepend=bos)
            yield torch.tensor([t for ids in encoded for t in ids], dtype=torch.long)
