"""Base pretraining: it learns, it resumes bit-exactly, and DDP on 2 gloo processes equals one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint import CheckpointError, load_checkpoint
from nanochat.data.shards import split_shards
from nanochat.train.base import BaseConfig, train_base
from nanochat.train.config import ConfigError
from nanochat.train.dataloader import TokenDataLoader
from nanochat.train.distributed import DistContext
from nanochat.train.tracking import read_metrics

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny_config(corpus, out: Path, **overrides) -> BaseConfig:
    shards, tokenizer = corpus
    values = {
        "data": str(shards),
        "tokenizer": str(tokenizer),
        "out": str(out),
        "depth": 1,
        "max_seq_len": 32,
        "device_batch_size": 4,
        "num_iterations": 12,
        "eval_every": 6,
        "eval_batches": 2,
        "device": "cpu",
        "progress": False,
    }
    return BaseConfig(**{**values, **overrides})


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["train_loss"] for m in read_metrics(run_dir) if "train_loss" in m}


def val_bpbs(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["val_bpb"] for m in read_metrics(run_dir) if "val_bpb" in m}


def test_a_short_run_learns_and_writes_a_servable_checkpoint(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, tmp_path / "run", num_iterations=40, eval_every=20, matrix_lr=0.05)
    summary = train_base(config, CPU)
    bpb = val_bpbs(tmp_path / "run")
    assert bpb[40] < bpb[0] - 0.5, bpb  # word soup from 16 words is easy to beat
    steps = losses(tmp_path / "run")
    assert sum(list(steps.values())[-5:]) / 5 < sum(list(steps.values())[:5]) / 5
    assert summary["val_bpb"] == pytest.approx(bpb[40])
    assert summary["tokens_per_second"] >= 0  # measured: a rate, whatever the machine's load
    loaded = load_checkpoint(tmp_path / "run")  # tokenizer copied beside the model
    assert loaded.step == 40 and loaded.model.config.n_layer == 1
    report = (tmp_path / "run" / "report.md").read_text()
    assert "loss.png" in report and (tmp_path / "run" / "loss.png").stat().st_size > 1000
    meta = json.loads((tmp_path / "run" / "meta_000040.json").read_text())
    assert meta["val_bpb"] == pytest.approx(bpb[40])
    assert meta["dataloader_state_dict"]["world_size"] == 1


def test_resume_is_bit_exact(tiny_corpus, tmp_path):
    """12 steps straight == 6 steps, checkpoint, new process state, 6 more (with gradient accumulation)."""
    whole = tiny_config(tiny_corpus, tmp_path / "whole", save_every=6, total_batch_size=2 * 4 * 32)
    train_base(whole, CPU)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    for path in (tmp_path / "whole").glob("*000006*"):
        shutil.copy(path, resumed_dir / path.name)
    torch.manual_seed(999)  # a resumed run must not depend on the process's RNG before it
    train_base(replace(whole, out=str(resumed_dir), resume=True), CPU)
    a = torch.load(tmp_path / "whole" / "model_000012.pt", weights_only=True)
    b = torch.load(resumed_dir / "model_000012.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa = torch.load(tmp_path / "whole" / "optim_000012_rank0.pt", weights_only=True)
    ob = torch.load(resumed_dir / "optim_000012_rank0.pt", weights_only=True)
    muon_a, muon_b = oa["optimizers"]["optimizers"][1]["state"], ob["optimizers"]["optimizers"][1]["state"]
    assert all(
        torch.equal(muon_a["state"][k]["momentum_buffer"], muon_b["state"][k]["momentum_buffer"])
        for k in muon_a["state"]
    )
    whole_losses = losses(tmp_path / "whole")
    assert losses(resumed_dir) == {s: whole_losses[s] for s in range(7, 13)}
    meta_a = json.loads((tmp_path / "whole" / "meta_000012.json").read_text())
    meta_b = json.loads((resumed_dir / "meta_000012.json").read_text())
    assert meta_a["dataloader_state_dict"] == meta_b["dataloader_state_dict"]


def test_bad_configs_fail_clearly(tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match="multiple of device_batch_size"):
        train_base(tiny_config(tiny_corpus, tmp_path / "a", total_batch_size=100), CPU)
    with pytest.raises(CheckpointError, match=r"not found|no model"):
        train_base(tiny_config(tiny_corpus, tmp_path / "b", resume=True), CPU)
    train_base(tiny_config(tiny_corpus, tmp_path / "c", num_iterations=2), CPU)
    with pytest.raises(CheckpointError, match="cannot resume"):
        train_base(tiny_config(tiny_corpus, tmp_path / "c", num_iterations=4, depth=2, resume=True), CPU)
    with pytest.raises(ConfigError, match="depth must be >= 1"):
        tiny_config(tiny_corpus, tmp_path / "d", depth=0)


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_two_gloo_processes_equal_one_process_on_the_same_global_batch(tiny_corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo) vs one process fed the same global batches in one step."""
    shards, tokenizer_dir = tiny_corpus
    steps, batch, seq = 4, 4, 32
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "nanochat", "train", "base",
        "--data", str(shards), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "ddp"),
        "--depth", "1", "--max-seq-len", str(seq), "--device-batch-size", str(batch),
        "--total-batch-size", str(2 * batch * seq), "--num-iterations", str(steps),
        "--eval-every", "0", "--eval-batches", "1", "--device", "cpu", "--progress", "false",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    # one process, same global batch: rank 0's micro-batch then rank 1's, accumulated into one step
    tokenizer = load_checkpoint(tmp_path / "ddp").tokenizer
    train_shards, _ = split_shards(shards)
    ranks = [iter(TokenDataLoader(train_shards, tokenizer, batch, seq, rank=r, world_size=2)) for r in (0, 1)]

    def interleaved():
        while True:
            for loader in ranks:
                yield next(loader)

    single = BaseConfig(
        data=str(shards), tokenizer=str(tokenizer_dir), out=str(tmp_path / "single"), depth=1,
        max_seq_len=seq, device_batch_size=batch, total_batch_size=2 * batch * seq, num_iterations=steps,
        eval_every=0, eval_batches=1, device="cpu", progress=False,
    )  # fmt: skip
    train_base(single, CPU, batches=interleaved())
    ddp_losses, single_losses = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert sorted(ddp_losses) == list(range(1, steps + 1))
    for step in ddp_losses:
        assert ddp_losses[step] == pytest.approx(single_losses[step], abs=1e-5), step
    a = torch.load(tmp_path / "ddp" / f"model_{steps:06d}.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / f"model_{steps:06d}.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    meta = json.loads((tmp_path / "ddp" / f"meta_{steps:06d}.json").read_text())
    assert meta["dataloader_state_dict"]["world_size"] == 2
    assert [s["row_group"] % 2 for s in meta["dataloader_state_dict"]["ranks"]] == [0, 1]
    assert (tmp_path / "ddp" / f"optim_{steps:06d}_rank1.pt").is_file()


@pytest.mark.slow
def test_torch_compile_trains_like_eager(tiny_corpus, tmp_path):
    """`--compile true` (inductor, C++ on CPU) gives the eager run's losses up to float reordering."""
    eager = tiny_config(tiny_corpus, tmp_path / "eager", num_iterations=3, eval_every=0, eval_batches=1)
    train_base(eager, CPU)
    train_base(replace(eager, out=str(tmp_path / "compiled"), compile=True), CPU)
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert a.keys() == b.keys() == {1, 2, 3}
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4)
