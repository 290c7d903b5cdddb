"""Checkpoints in the nanochat layout: `model_NNNNNN.pt` + `meta_NNNNNN.json` (+ tokenizer files).

- `model_NNNNNN.pt` is a plain state dict saved with `torch.save`; it is loaded with `weights_only=True`,
  so a model file can never run code. GPU-trained checkpoints store the embedding in bf16; the loader
  converts every tensor to the dtype asked for. A `_orig_mod.` prefix (left by `torch.compile`) is stripped.
  Files in torch's zip format (every `torch.save` since torch 1.6) are memory-mapped (`mmap=True`, a
  private mapping): tensors already in the dtype and on the CPU asked for are used where they lie, never
  copied, and their pages are read as the first forward touches them. So a model file that is served
  must be replaced, never rewritten in place (`save_checkpoint` renames a finished file over the old one).
- `meta_NNNNNN.json` carries `model_config` (the only field the loader needs) and whatever the trainer adds.
- `optim_NNNNNN_rankR.pt` optional optimizer state per rank (written by training; loaded only on request).
- The tokenizer (`tokenizer.pkl`, `token_bytes.pt`) sits inside the checkpoint folder, in a `tokenizer/`
  folder beside it, or two levels up (nanochat's base-dir layout: BASE/base_checkpoints/d20 and
  BASE/tokenizer). `tokenizer.pkl` is a pickle: load checkpoints only from sources you trust.

Sources are a local folder or a Hugging Face repo id (`owner/name`, downloaded with `huggingface_hub`).
Every problem a user can cause raises `CheckpointError` with a message that says what to fix.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nanochat.files import write_atomically, write_text_atomically
from nanochat.gpt import GPT, GPTConfig, meta_model
from nanochat.quantize import check_quantization, quantize_model
from nanochat.tokenizer import Tokenizer, TokenizerError

MODEL_FILE = re.compile(r"^model_(\d{6,})\.pt$")
COMPILE_PREFIX = "_orig_mod."
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6 is a zip archive
TOKENIZER_FILES = ("tokenizer.pkl", "token_bytes.pt")
HUB_PATTERNS = [
    "model_*.pt",
    "meta_*.json",
    "tokenizer.pkl",
    "token_bytes.pt",
    "*/tokenizer.pkl",
    "*/token_bytes.pt",
]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or matched to its model or tokenizer."""


@dataclass
class LoadedCheckpoint:
    model: GPT
    tokenizer: Tokenizer
    meta: dict
    step: int
    directory: Path


def model_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"model_{step:06d}.pt"


def meta_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"meta_{step:06d}.json"


def optimizer_path(directory: Path, step: int, rank: int = 0) -> Path:
    return Path(directory) / f"optim_{step:06d}_rank{rank:d}.pt"


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
    """The steps with a model file in `directory`, ascending (empty if none or no folder)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := MODEL_FILE.match(p.name)))


def find_last_step(directory: str | os.PathLike) -> int:
    """The largest step with a model file in `directory`, preferring complete ones: `save_checkpoint`
    writes the meta file last, so a step whose meta is missing was cut short and an earlier complete
    step is taken instead (if there is none, the caller's read of the meta says what is missing)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {directory}")
    steps = checkpoint_steps(directory)
    if not steps:
        raise CheckpointError(f"no model_NNNNNN.pt files in {directory}")
    complete = [step for step in steps if meta_path(directory, step).is_file()]
    return max(complete or steps)


def delete_step(directory: str | os.PathLike, step: int) -> None:
    """Remove one step's files (meta first, so a half-deleted step is never taken as complete)."""
    directory = Path(directory)
    meta_path(directory, step).unlink(missing_ok=True)
    model_path(directory, step).unlink(missing_ok=True)
    for path in directory.glob(f"optim_{step:06d}_rank*.pt"):
        path.unlink(missing_ok=True)


def resolve_source(
    source: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None
) -> Path:
    """A local checkpoint folder for `source`: the folder itself, or a Hugging Face repo snapshot."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"a checkpoint source must be a folder, got a file: {path}")
        return path
    text = str(source)
    if not REPO_ID.match(text) or text.startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint folder not found: {path}")
    return _download_from_hub(text, revision, cache_dir)


def _download_from_hub(repo_id: str, revision: str | None, cache_dir: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS
        )
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"Hugging Face repo {repo_id!r} not found (or private without a token)") from e
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"{repo_id!r} is not a local folder and is not in the Hugging Face cache, and the hub "
            f"cannot be reached (offline?): {e}"
        ) from e
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"could not download {repo_id!r} from the Hugging Face hub: {e}") from e
    return Path(folder)


def find_tokenizer_dir(checkpoint_dir: str | os.PathLike) -> Path:
    """Where the tokenizer files are for a checkpoint folder (see the module docstring)."""
    checkpoint_dir = Path(checkpoint_dir).resolve()
    candidates = [
        checkpoint_dir,
        checkpoint_dir / "tokenizer",
        checkpoint_dir.parent / "tokenizer",
        checkpoint_dir.parent.parent / "tokenizer",
    ]
    for candidate in candidates:
        if (candidate / "tokenizer.pkl").is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise CheckpointError(f"no tokenizer.pkl for checkpoint {checkpoint_dir}; looked in: {looked}")


def read_meta(directory: str | os.PathLike, step: int) -> dict:
    path = meta_path(Path(directory), step)
    if not path.is_file():
        raise CheckpointError(f"missing meta file {path}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"meta file {path} is not valid JSON: {e}") from e
    except OSError as e:
        raise CheckpointError(f"cannot read meta file {path}: {e.strerror}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("model_config"), dict):
        raise CheckpointError(f"meta file {path} has no model_config object")
    return meta


def _why(error: Exception) -> str:
    """One line from torch.load's error: its weights-only unpickler puts the reason between advice
    paragraphs ("WeightsUnpickler error: Unsupported operand 120"), other errors lead with it."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        return "WeightsUnpickler error: " + " ".join(text.split())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def is_zip_format(path: Path) -> bool:
    """Whether `path` is in torch's zip format (the one `torch.load(mmap=True)` can map)."""
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC


def read_state_dict(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors only (`weights_only=True`), with any `_orig_mod.` prefix stripped; memory-mapped where the
    file's format allows (see the module docstring), else read whole."""
    if not path.is_file():
        raise CheckpointError(f"missing model file {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=is_zip_format(path))
    except Exception as e:  # torch raises many types for truncated or foreign files
        problem = f"model file {path} is corrupt or not a tensor-only state dict: {_why(e)}"
        raise CheckpointError(problem) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"model file {path} does not hold a state dict of tensors")
    return {k.removeprefix(COMPILE_PREFIX): v for k, v in state.items()}


def build_model(
    config: GPTConfig,
    state: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "checkpoint",
) -> GPT:
    """A model with `state` loaded strictly, every tensor in `dtype`."""
    model = meta_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
        if unknown:
            parts.append(f"unknown keys: {', '.join(unknown[:8])}{' …' if len(unknown) > 8 else ''}")
        raise CheckpointError(f"{source} does not match model_config {config.to_dict()}: {'; '.join(parts)}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: {key} has shape {list(tensor.shape)}, model_config expects "
                f"{list(expected[key].shape)} (vocab or width mismatch?)"
            )
    # assign=True puts the given tensors in place of the meta ones: no `to_empty` first, whose empty_like
    # on meta tensors runs torch's Python reference kernels and imports sympy (~0.5 s of every start)
    converted = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    model.reset_rotary(device)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor outside the state dict that build_model does not compute: a bug here, not the file's
        raise RuntimeError(f"build_model left {', '.join(left)} on the meta device")
    return model.eval()


def load_checkpoint(
    source: str | os.PathLike,
    step: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
    cache_dir: str | None = None,
    before_weights: Callable[[GPTConfig], None] | None = None,
    quantization: str = "none",
) -> LoadedCheckpoint:
    """Load model, tokenizer and meta from a folder or a Hugging Face repo id (latest step by default);
    with quantization "int8", the loaded model's linears are then made int8 (nanochat/quantize.py).

    `before_weights(config)` is called once the model's config is known (and matches the tokenizer), before
    the weights are read: the caller's chance to refuse the model (e.g. one too large for its memory) by
    raising, before anything of its size is allocated."""
    check_quantization(quantization, torch.device(device), dtype)
    directory = resolve_source(source, revision, cache_dir)
    if step is None:
        step = find_last_step(directory)
    meta = read_meta(directory, step)
    try:
        config = GPTConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path(directory, step)}: bad model_config: {e}") from e
    try:
        tokenizer = Tokenizer.from_directory(find_tokenizer_dir(directory))
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise CheckpointError(
            f"vocab mismatch: tokenizer has {tokenizer.get_vocab_size()} tokens, "
            f"model_config.vocab_size is {config.vocab_size}"
        )
    if before_weights is not None:
        before_weights(config)
    path = model_path(directory, step)
    state = read_state_dict(path)
    model = quantize_model(build_model(config, state, device, dtype, source=str(path)), quantization)
    return LoadedCheckpoint(model, tokenizer, meta, step, directory)


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    meta: dict,
    optimizer_state: dict | None = None,
    rank: int = 0,
) -> Path:
    """Write optimizer state (every rank), then model and meta (rank 0 only), each atomically (temporary
    file + rename). The meta file comes last: it marks the step complete (`find_last_step`)."""
    directory = Path(directory)
    if "model_config" not in meta:
        raise CheckpointError("meta must contain model_config")
    try:
        if optimizer_state is not None:
            write_atomically(optimizer_path(directory, step, rank), lambda f: torch.save(optimizer_state, f))
        if rank == 0:
            state = {k.removeprefix(COMPILE_PREFIX): v.detach() for k, v in model_state.items()}
            write_atomically(model_path(directory, step), lambda f: torch.save(state, f))
            text = json.dumps(meta, indent=2)
            write_text_atomically(meta_path(directory, step), text)
    # torch.save's zip writer reports a failed write (a full disk, a file-size limit) as a RuntimeError
    except (OSError, RuntimeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise CheckpointError(
            f"cannot write checkpoint step {step} to {directory} (disk full or not writable?): {reason}"
        ) from e
    return directory
