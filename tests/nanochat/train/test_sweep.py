"""`nanochat sweep` on two tiny depths: every figure recorded, the report and its plots, a rerun that skips
finished depths, and a depth killed mid-training (SIGKILL right after a checkpoint) that resumes from it and
ends where the uninterrupted sweep ended."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nanochat.cli import main
from nanochat.prices import cloud_run_price_per_hour
from nanochat.train.sweep import RECOMMENDATION_RULE, SweepConfig, power_law

pytestmark = pytest.mark.slow  # two trainings and benchmarks, ~20 s

PNG = b"\x89PNG\r\n\x1a\n"
# 8 steps of 4 x 32 tokens; checkpoints at steps 2, 4, 6 and 8
TINY = ["--tokens", "1024", "--max-seq-len", "32", "--device-batch-size", "4", "--eval-batches", "2"]
TINY += ["--bench-decode-steps", "2", "--bench-repeats", "1"]
KILL_AFTER_CHECKPOINT = """
import os, signal, sys
from nanochat.train import checkpoint_writer

write = checkpoint_writer.CheckpointWriter._write

def write_then_die(self, step, *rest):
    write(self, step, *rest)
    if step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)  # as an OOM kill or a preempted VM would

checkpoint_writer.CheckpointWriter._write = write_then_die
from nanochat.cli import main
sys.exit(main(sys.argv[1:]))
"""


def sweep_argv(corpus: tuple[Path, Path], out: Path, depths: str) -> list[str]:
    shards, tokenizer = corpus
    return [
        *("sweep", "--data", str(shards), "--tokenizer", str(tokenizer), "--out", str(out)),
        *("--depths", depths, *TINY),
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_corpus) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    assert main(sweep_argv(tiny_corpus, out, "2,1")) == 0
    return out


def results(out: Path) -> dict[int, dict]:
    return {d: json.loads((out / f"d{d}" / "result.json").read_text()) for d in (1, 2)}


def test_each_depth_records_size_flops_quality_speed_and_cost(finished):
    by_depth = results(finished)
    assert by_depth[1]["width"] == 64 and by_depth[2]["width"] == 128  # width = 64 x depth
    assert by_depth[1]["parameters"] < by_depth[2]["parameters"]
    price = cloud_run_price_per_hour(2, 4)  # envs/prod.yaml: 2 vCPU, 4 GiB
    for r in by_depth.values():
        assert r["training_tokens"] == 8 * 4 * 32
        assert r["training_flops"] == pytest.approx(r["flops_per_token"] * r["training_tokens"])
        assert 0 < r["val_bpb"] < 10 and r["training_tok_per_s"] > 0
        assert set(r["engine_tok_per_s"]) == {"1", "16"} and all(
            v > 0 for v in r["engine_tok_per_s"].values()
        )
        expected = price / (r["engine_tok_per_s"]["16"] * 3600) * 1e6
        assert r["dollars_per_million_tokens"]["cloud_run_cpu_batch16"] == pytest.approx(expected, rel=1e-3)
        assert r["dollars_per_million_tokens"]["l4_vm_batch16_estimate"] > 0
        assert r["price_per_hour"]["gpu_machine_type"] == "g2-standard-8"
        assert r["resumed_from_step"] is None
        assert r["load_average_1m"] >= 0 and r["cpus"] >= 1  # the load the timings were taken under


def test_report_fits_power_laws_plots_and_recommends(finished):
    report = (finished / "report.md").read_text()
    assert report.count("(exponent ") == 2  # bpb vs parameters and vs training FLOPs
    assert f"Rule: {RECOMMENDATION_RULE}." in report
    assert "**d1**" in report or "**d2**" in report
    assert "| final val bpb |" in report  # the side-by-side table of `nanochat report compare`
    assert "Load on the machine" in report
    for name in (
        "bpb_scaling.png",
        "cost_quality_latency.png",
        "d1/report/curves.png",
        "d2/report/curves.png",
    ):
        assert (finished / name).read_bytes().startswith(PNG), name


def test_power_law_recovers_a_known_exponent():
    xs = [1e3, 1e4, 1e5, 1e6]
    a, b = power_law(xs, [3.0 * x**-0.25 for x in xs])
    assert (a, b) == (pytest.approx(3.0), pytest.approx(-0.25))
    assert power_law([1e3], [1.0]) is None


def test_rerun_skips_finished_depths(finished, tiny_corpus, capsys):
    before = {d: (finished / f"d{d}" / "result.json").read_bytes() for d in (1, 2)}
    assert main(sweep_argv(tiny_corpus, finished, "1,2")) == 0
    out = capsys.readouterr().out
    assert "d1 done before, skipped" in out and "d2 done before, skipped" in out
    assert {d: (finished / f"d{d}" / "result.json").read_bytes() for d in (1, 2)} == before


@pytest.mark.integration
def test_killed_depth_resumes_from_its_last_checkpoint(tmp_path, finished, tiny_corpus, child_env):
    out = tmp_path / "sweep"
    env = {**child_env, "KILL_AT_STEP": "4"}
    argv = sweep_argv(tiny_corpus, out, "2")
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, *argv], env=env, check=False)
    assert killed.returncode == -9
    assert not (out / "d2" / "result.json").exists()
    assert (out / "d2" / "meta_000004.json").is_file() and not (out / "d2" / "meta_000006.json").exists()

    assert main(argv) == 0
    resumed = json.loads((out / "d2" / "result.json").read_text())
    assert resumed["resumed_from_step"] == 4
    # the resume is exact (optimizer, RNG, data position): it ends where the uninterrupted run ended
    assert resumed["val_bpb"] == pytest.approx(results(finished)[2]["val_bpb"], rel=1e-6)


@pytest.mark.parametrize(
    ("depths", "message"),
    [("2,x", "--depths must be integers"), ("0,2", "depths must be positive"), ("2,2", "depths repeat")],
)
def test_bad_depths_are_one_line_errors(tmp_path, tiny_corpus, capsys, depths, message):
    assert main(sweep_argv(tiny_corpus, tmp_path / "out", depths)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nanochat: error: ") and message in err and "\n" not in err


def test_config_derives_steps_from_tokens():
    config = SweepConfig(data="d", tokenizer="t", out="o", tokens=1000, max_seq_len=32, device_batch_size=4)
    assert config.num_iterations == 8  # ceil(1000 / 128)
