"""Trainer fine-tuning of the exported demo model: full and LoRA runs learn, adapters are saved apart and
load, a merged model computes what base + adapter computes, and the comparison report holds together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nanochat.cli import main
from nanochat.train.sft import IGNORE, sft_example
from tests.nanochat.test_hf_export import DEMO, demo_export
from tracks.hf_finetune import (
    IGNORE_INDEX,
    FinetuneConfig,
    FinetuneError,
    chat_examples,
    finetune,
    merge_lora,
)

HELDOUT = str(DEMO / "heldout.jsonl")
# peft 0.21 asks transformers 5.24 a deprecated question; not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory) -> tuple[str, str]:
    """40 held-out conversations to train on and the same 40 to evaluate: a few steps must fit them."""
    folder = tmp_path_factory.mktemp("sft")
    lines = Path(HELDOUT).read_text().splitlines()[:40]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "train.jsonl"), str(folder / "train.jsonl")


def test_labels_are_nanochats_sft_targets():
    from transformers import AutoTokenizer

    from nanochat.checkpoint import load_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(demo_export())
    ours = load_checkpoint(DEMO).tokenizer
    conversations = [json.loads(line) for line in Path(HELDOUT).read_text().splitlines()[:30]]
    for example, conversation in zip(chat_examples(tokenizer, HELDOUT, 10**6), conversations, strict=False):
        inputs, targets = sft_example(ours, conversation, 10**6)
        # transformers shifts labels inside the loss; nanochat shifts them when building the example
        assert example["input_ids"][:-1] == inputs
        assert [IGNORE if t == IGNORE_INDEX else t for t in example["labels"][1:]] == targets


@pytest.fixture(scope="module")
def full_run(small_sets, tmp_path_factory):
    train, val = small_sets
    out = tmp_path_factory.mktemp("full")
    return finetune(FinetuneConfig(str(demo_export()), train, str(out), val, "full", steps=6, batch_size=8))


@pytest.fixture(scope="module")
def lora_run(small_sets, tmp_path_factory):
    train, val = small_sets
    out = tmp_path_factory.mktemp("lora")
    return finetune(FinetuneConfig(str(demo_export()), train, str(out), val, "lora", steps=6, batch_size=8))


def test_full_finetuning_lowers_the_eval_loss_and_saves_a_model(full_run):
    from transformers import AutoModelForCausalLM

    assert full_run.eval_loss_after < full_run.eval_loss_before - 0.2
    assert full_run.trainable_parameters == full_run.total_parameters == 2_113_536
    assert len(full_run.train_losses) == 6 and full_run.train_seconds > 0
    assert full_run.peak_memory_mb is None or full_run.peak_memory_mb > 50
    AutoModelForCausalLM.from_pretrained(full_run.out)  # a plain model folder
    record = json.loads((Path(full_run.out) / "finetune.json").read_text())
    assert record["result"]["eval_loss_after"] == full_run.eval_loss_after


def test_lora_trains_few_parameters_and_saves_only_the_adapter(lora_run):
    out = Path(lora_run.out)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    assert lora_run.trainable_parameters < 0.05 * lora_run.total_parameters
    assert lora_run.eval_loss_after < lora_run.eval_loss_before - 0.1
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}


@torch.inference_mode()
def test_merged_model_equals_base_plus_adapter(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = merge_lora(demo_export(), lora_run.out, tmp_path / "merged")
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(demo_export())
    with_adapter = PeftModel.from_pretrained(base, lora_run.out).eval()
    plain = AutoModelForCausalLM.from_pretrained(demo_export()).eval()
    idx = torch.randint(0, 2039, (2, 64), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(merged(idx).logits, with_adapter(idx).logits, rtol=0, atol=1e-4)
    assert (merged(idx).logits - plain(idx).logits).abs().max() > 1e-2  # the adapter changed something


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [({"method": "qlora"}, "method must be full or lora"), ({"steps": 0}, "steps must be at least 1"),
     ({"learning_rate": -1.0}, "learning_rate must be >= 0")],
)  # fmt: skip
def test_bad_settings_are_clear_errors(kwargs, problem):
    with pytest.raises(FinetuneError, match=problem):
        FinetuneConfig("m", "t.jsonl", "out", **kwargs)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FinetuneError, match="is not a Hugging Face model folder"):
        finetune(FinetuneConfig(str(tmp_path), HELDOUT, str(tmp_path / "out")))
    with pytest.raises(FinetuneError, match="is not a LoRA adapter folder"):
        merge_lora(demo_export(), tmp_path, tmp_path / "merged")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_export())
    one_word = tmp_path / "one.jsonl"
    one_word.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    )
    with pytest.raises(FinetuneError, match="no conversation has assistant tokens"):
        chat_examples(tokenizer, one_word, max_len=3)  # truncation leaves no assistant token
    tokenizer.chat_template = None
    with pytest.raises(FinetuneError, match="no chat template"):
        chat_examples(tokenizer, one_word, max_len=100)


def test_compare_reports_full_lora_and_nanochat_sft(small_sets, tmp_path, capsys):
    train, val = small_sets
    argv = [
        "hf",
        "compare",
        "--checkpoint",
        str(DEMO),
        "--train",
        train,
        "--val",
        val,
        "--out",
        str(tmp_path),
    ]
    # 8 steps: with AdamW at 1e-3, full fine-tuning of the demo model rises for its first few steps on these
    # 40 conversations (4 steps: 1.976 -> 2.012; 8 steps: -> 1.828), then falls
    assert main([*argv, "--steps", "8", "--batch-size", "4"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["runs"]) == {"full", "lora", "nanochat-sft"}
    before = {r["eval_loss_before"] for r in report["runs"].values()}
    assert len(before) == 1  # one base model, measured one way
    for run in report["runs"].values():
        assert run["eval_loss_after"] < run["eval_loss_before"]
    assert report["runs"]["lora"]["trainable_parameters"] < report["runs"]["full"]["trainable_parameters"]
    assert "| lora |" in (tmp_path / "report.md").read_text()
