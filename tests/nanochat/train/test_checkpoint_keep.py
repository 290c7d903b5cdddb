"""Training checkpoints: keep the newest K and the best by val bpb, write from a background thread off CPU
copies taken at the step, and never leave a half-written step as the latest one when killed mid-write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint import (
    CheckpointError,
    checkpoint_steps,
    find_last_step,
    load_checkpoint,
    read_meta,
    read_state_dict,
)
from nanochat.gpt import GPTConfig
from nanochat.train.base import BaseConfig, train_base
from nanochat.train.checkpoint_writer import CheckpointWriter, best_step
from nanochat.train.config import ConfigError
from nanochat.train.distributed import DistContext

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
CONFIG = GPTConfig(sequence_len=16, vocab_size=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=8).to_dict()
# val bpb per step 1..5: the best (step 2) is old by the end
BPB = {1: 3.0, 2: 1.0, 3: 4.0, 4: 5.0, 5: 6.0}


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4, 4), value)}


def write_steps(directory: Path, **options) -> list[int]:
    with CheckpointWriter(directory, **options) as writer:
        for step, bpb in BPB.items():
            writer.save(step, state(step), {"model_config": CONFIG, "val_bpb": bpb}, {"opt": state(-step)})
    return checkpoint_steps(directory)


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        ({"keep_last": 2}, [2, 4, 5]),
        ({"keep_last": 2, "keep_best": False}, [4, 5]),
        ({"keep_last": 1}, [2, 5]),
        ({"keep_last": 0}, [1, 2, 3, 4, 5]),
        ({"keep_last": 2, "background": False}, [2, 4, 5]),
    ],
)
def test_keeps_the_newest_k_and_the_best(tmp_path, options, kept):
    assert write_steps(tmp_path, **options) == kept
    assert sorted(int(p.name[6:12]) for p in tmp_path.glob("optim_*.pt")) == kept  # pruned with their step
    assert sorted(int(p.name[5:11]) for p in tmp_path.glob("meta_*.json")) == kept
    assert not list(tmp_path.glob(".*"))  # no temporary files left
    assert best_step(tmp_path) == min(kept, key=BPB.get)  # the lowest val bpb of the steps left


def test_writes_the_state_as_it_was_at_save_time(tmp_path):
    weights = state(1.0)
    with CheckpointWriter(tmp_path) as writer:
        writer.save(1, weights, {"model_config": CONFIG})
        weights["w"].fill_(99.0)  # the training step goes on changing the live tensors
        writer.save(2, weights, {"model_config": CONFIG})  # waits for step 1's write first
    assert torch.equal(read_state_dict(tmp_path / "model_000001.pt")["w"], torch.full((4, 4), 1.0))
    assert torch.equal(read_state_dict(tmp_path / "model_000002.pt")["w"], torch.full((4, 4), 99.0))


def test_a_failed_background_write_is_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    writer = CheckpointWriter(blocker / "run")
    writer.save(1, state(1.0), {"model_config": CONFIG})
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint step 1 .*Not a directory"):
        writer.wait()


KILL_DURING = """
import os, signal, sys
import torch
from nanochat.train.checkpoint_writer import CheckpointWriter
import nanochat.checkpoint as checkpoint

directory, target = sys.argv[1], sys.argv[2]
config = {"sequence_len": 16, "vocab_size": 32, "n_layer": 1, "n_head": 1, "n_kv_head": 1, "n_embd": 8}
save = torch.save

def save_half_then_die(obj, f, *args, **kwargs):
    if target == "model" and "model_000002" in f.name:
        f.write(b"PK\\x03\\x04 half a file")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    save(obj, f, *args, **kwargs)

write_text = checkpoint.write_text_atomically

def die_before_meta(path, text):
    if target == "meta" and "meta_000002" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
    return write_text(path, text)

checkpoint.torch.save = save_half_then_die
checkpoint.write_text_atomically = die_before_meta
with CheckpointWriter(directory) as writer:
    for step in (1, 2):
        writer.save(step, {"w": torch.full((4, 4), float(step))}, {"model_config": config, "val_bpb": 1.0})
"""


@pytest.mark.integration
@pytest.mark.parametrize("target", ["model", "meta"])
def test_a_kill_mid_write_leaves_the_previous_step_as_latest(tmp_path, child_env, target):
    directory = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING, str(directory), target], env=child_env, check=False
    )
    assert killed.returncode == -9
    assert find_last_step(directory) == 1
    assert read_meta(directory, 1)["val_bpb"] == 1.0
    torch.testing.assert_close(read_state_dict(directory / "model_000001.pt")["w"], torch.full((4, 4), 1.0))
    if target == "model":  # the half file is a hidden temporary, never model_000002.pt
        assert checkpoint_steps(directory) == [1]
        assert [p.name for p in directory.iterdir() if p.name.startswith(".model_000002")]
    else:  # model_000002.pt is whole, but without its meta the step is not complete
        assert checkpoint_steps(directory) == [1, 2]


def test_training_keeps_last_and_best_and_loads(tmp_path, tiny_corpus):
    shards, tokenizer = tiny_corpus
    config = BaseConfig(
        data=str(shards),
        tokenizer=str(tokenizer),
        out=str(tmp_path / "run"),
        depth=1,
        max_seq_len=32,
        device_batch_size=4,
        num_iterations=8,
        eval_every=2,
        eval_batches=2,
        save_every=2,
        keep_last=1,
        device="cpu",
        progress=False,
    )
    train_base(config, CPU)
    steps = checkpoint_steps(config.out)
    best = best_step(Path(config.out))
    assert steps == sorted({8, best})
    assert load_checkpoint(config.out).step == 8
    assert load_checkpoint(config.out, step=best).meta["val_bpb"] == min(
        read_meta(config.out, s)["val_bpb"] for s in steps
    )


def test_bad_keep_last_is_a_config_error(tiny_corpus, tmp_path):
    shards, tokenizer = tiny_corpus
    with pytest.raises(ConfigError, match="keep_last must be >= 0"):
        BaseConfig(data=str(shards), tokenizer=str(tokenizer), out=str(tmp_path), keep_last=-1)
