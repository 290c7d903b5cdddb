"""Writing training checkpoints off the training step: a background thread, retention, a bucket mirror.

`CheckpointWriter.save` takes CPU copies of the tensors it is given (the only part that waits on the step),
then a background thread writes the files (`save_checkpoint`: temporary file + rename, meta last), prunes
old steps and mirrors to a bucket. A second `save` first waits for the previous write, so at most one
checkpoint is in flight and memory holds at most one extra copy. `close()` waits for the last one and
re-raises any error the thread met (a failed write must not pass silently).

Retention (`keep_last`, `keep_best`): after each write the folder keeps the newest `keep_last` complete
steps (0: all of them) and, with `keep_best`, the step with the lowest `val_bpb` in its meta. Only rank 0
prunes (it owns model and meta files), after its own write.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import torch

from nanochat.checkpoint import checkpoint_steps, delete_step, meta_path, save_checkpoint


def cpu_copy(value: Any) -> Any:
    """`value` with every tensor replaced by a detached CPU copy (nested dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(cpu_copy(v) for v in value)
    return value


def steps_to_keep(directory: Path, keep_last: int, keep_best: bool) -> set[int]:
    """The complete steps in `directory` that retention keeps (see the module docstring)."""
    steps = [s for s in checkpoint_steps(directory) if meta_path(directory, s).is_file()]
    keep = set(steps if keep_last == 0 else steps[-keep_last:])
    if keep_best:
        best = best_step(directory, steps)
        if best is not None:
            keep.add(best)
    return keep


def best_step(directory: Path, steps: list[int] | None = None) -> int | None:
    """The complete step with the lowest finite `val_bpb` in its meta (the later one on a tie)."""
    if steps is None:
        steps = [s for s in checkpoint_steps(directory) if meta_path(directory, s).is_file()]
    scored = []
    for step in steps:
        try:
            bpb = json.loads(meta_path(directory, step).read_text()).get("val_bpb")
        except (OSError, ValueError):
            continue
        if isinstance(bpb, int | float) and math.isfinite(bpb):
            scored.append((bpb, -step))
    return -min(scored)[1] if scored else None


class CheckpointWriter:
    """Writes one run's checkpoints (see the module docstring); use `with` or call `close()`."""

    def __init__(
        self,
        directory: str | Path,
        *,
        keep_last: int = 0,
        keep_best: bool = True,
        background: bool = True,
        bucket: str = "",
        rank: int = 0,
    ) -> None:
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.background = background
        self.rank = rank
        self.mirror = None
        if bucket:
            from nanochat.train.gcs import BucketMirror

            self.mirror = BucketMirror(bucket)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, step: int, model_state: dict, meta: dict, optimizer_state: dict | None = None) -> None:
        """Copy the state to the CPU now; write it in the background (or here, with background=False)."""
        self.wait()
        job = (step, cpu_copy(model_state), dict(meta), cpu_copy(optimizer_state))
        if not self.background:
            self._write(*job)
            return
        self._thread = threading.Thread(target=self._run, args=job, name=f"checkpoint-{step}")
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight (if any) is done; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    close = wait

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.wait()
        elif self._thread is not None:  # already failing: finish the write, keep the first error
            self._thread.join()

    def _run(self, *job) -> None:
        try:
            self._write(*job)
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def _write(self, step: int, model_state: dict, meta: dict, optimizer_state: dict | None) -> None:
        save_checkpoint(
            self.directory, step, model_state, meta, optimizer_state=optimizer_state, rank=self.rank
        )
        if self.mirror is not None:
            self.mirror.upload_step(self.directory, step, self.rank)
        if self.rank != 0:
            return
        keep = steps_to_keep(self.directory, self.keep_last, self.keep_best)
        for old in checkpoint_steps(self.directory):
            if old not in keep and meta_path(self.directory, old).is_file():
                delete_step(self.directory, old)
                if self.mirror is not None:
                    self.mirror.delete_step(old)
