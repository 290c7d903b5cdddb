"""The `eval` command group through a fresh argparse parser, on tiny checkpoints and files written here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.checkpoint import load_checkpoint
from nanochat.data.shards import ShardError
from nanochat.eval import EvalError
from nanochat.eval.bpb import evaluate_bpb, unigram_bpb
from nanochat.eval.chat_eval import sample_completions
from nanochat.eval.commands import register

TRAIN_DOCS = [f"the quick brown fox {i} jumps over the lazy dog" for i in range(40)]
VAL_DOCS = [f"license grants freedom to share and change code {i}" for i in range(30)]
A_TEXT = "the quick brown fox jumps over the lazy dog"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="nanochat")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *argv])
    code = args.handler(args)
    return code, capsys.readouterr().out


def write_shard(path: Path, docs: list[str], row_group_size: int = 8) -> Path:
    pq.write_table(pa.table({"text": docs}), path, row_group_size=row_group_size)
    return path


@pytest.fixture
def checkpoint(tmp_path, make_model, write_checkpoint) -> Path:
    return write_checkpoint(tmp_path / "ckpt", make_model(sequence_len=32, seed=3))


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_shard(folder / "shard_00000.parquet", TRAIN_DOCS)
    write_shard(folder / "shard_00001.parquet", VAL_DOCS)
    return folder


# ---- bpb ----------------------------------------------------------------------------------------------
def test_bpb_evaluates_the_last_shard(capsys, checkpoint, data):
    argv = [
        "bpb",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--batch-size",
        "2",
        "--seq-len",
        "16",
    ]
    code, out = run(capsys, *argv, "--json")
    assert code == 0
    result = json.loads(out)
    # the same number from the library on the documented stream: [<|bos|>] + doc, B·T + 1 tokens a batch
    loaded = load_checkpoint(checkpoint)
    tokenizer = loaded.tokenizer
    stream = [t for doc in VAL_DOCS for t in tokenizer.encode(doc, prepend=tokenizer.get_bos_token_id())]
    windows = [torch.tensor(stream[i : i + 33]) for i in range(0, len(stream) - 32, 33)]
    batches = [(w[:-1].view(2, 16), w[1:].view(2, 16)) for w in windows]
    assert result["batches"] == len(batches) > 1 and result["tokens"] == len(batches) * 32
    assert result["bpb"] == pytest.approx(
        evaluate_bpb(loaded.model, batches, tokenizer.token_bytes), rel=1e-9
    )
    assert result["val_shard"].endswith("shard_00001.parquet") and "unigram_bpb" not in result


def test_bpb_with_max_batches_and_the_unigram_baseline(capsys, checkpoint, data):
    argv = [
        "bpb",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--batch-size",
        "2",
        "--seq-len",
        "16",
    ]
    code, out = run(capsys, *argv, "--max-batches", "1", "--unigram")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("val bpb: ") and "(32 tokens of shard_00001.parquet, step 10)" in lines[0]
    assert lines[1].startswith("unigram baseline bpb: ") and "fit on 1 training shards" in lines[1]
    code, out = run(capsys, *argv, "--max-batches", "1", "--unigram", "--json")
    result = json.loads(out)
    tokenizer = load_checkpoint(checkpoint).tokenizer
    bos = tokenizer.get_bos_token_id()
    train = [t for doc in TRAIN_DOCS for t in tokenizer.encode(doc, prepend=bos)]
    val = [t for doc in VAL_DOCS for t in tokenizer.encode(doc, prepend=bos)][
        1:33
    ]  # the first batch's targets
    expected = unigram_bpb(train, val, tokenizer.token_bytes, tokenizer.vocab_size)
    assert result["unigram_bpb"] == pytest.approx(expected, rel=1e-12)
    assert lines[1].startswith(f"unigram baseline bpb: {expected:.4f}")


def test_bpb_data_errors(capsys, checkpoint, tmp_path, data):
    base = ["bpb", "--checkpoint", str(checkpoint), "--data"]
    with pytest.raises(ShardError, match="nowhere does not exist"):
        run(capsys, *base, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match=r"empty holds no \*\.parquet shards"):
        run(capsys, *base, str(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "other" / "a.parquet")
    with pytest.raises(ShardError, match=r"a\.parquet has no 'text' column"):
        run(capsys, *base, str(tmp_path / "other"))
    with pytest.raises(EvalError, match="not one batch of 64x32; lower --batch-size or --seq-len"):
        run(capsys, *base, str(data), "--batch-size", "64")
    (tmp_path / "single").mkdir()
    write_shard(tmp_path / "single" / "only.parquet", VAL_DOCS)
    with pytest.raises(EvalError, match="--unigram fits on the shards before the last one"):
        run(capsys, *base, str(tmp_path / "single"), "--seq-len", "8", "--unigram")


# ---- sample -------------------------------------------------------------------------------------------
def test_sample_prints_each_prompt_with_its_completion(capsys, checkpoint):
    argv = ["sample", "--checkpoint", str(checkpoint), "--prompt", "the quick", "lazy", "--max-tokens", "6"]
    code, out = run(capsys, *argv, "--json")
    assert code == 0
    loaded = load_checkpoint(checkpoint)
    expected = sample_completions(
        loaded.model, loaded.tokenizer, ["the quick", "lazy"], max_tokens=6, seed=42
    )
    assert json.loads(out) == [
        {"prompt": "the quick", "completion": expected[0]},
        {"prompt": "lazy", "completion": expected[1]},
    ]
    code, out = run(capsys, *argv)
    assert out == f"the quick{expected[0]}\n\nlazy{expected[1]}\n"


# ---- chat ---------------------------------------------------------------------------------------------
def test_chat_scores_task_files_and_arithmetic(capsys, checkpoint, tmp_path):
    arc = tmp_path / "arc.jsonl"
    row = {"id": "1", "question": "Which fox?", "answerKey": "B"}
    rows = [{**row, "choices": {"text": ["red", "brown", "blue"], "label": ["A", "B", "C"]}}] * 3
    arc.write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["chat", "--checkpoint", str(checkpoint), "--task", f"arc-easy={arc}", "--arithmetic", "4"]
    code, out = run(capsys, *argv, "--max-tokens", "4", "--max-examples", "2", "--json")
    assert code == 0
    results = json.loads(out)
    assert list(results) == ["arc-easy", "arithmetic"]
    assert results["arc-easy"]["n"] == 2 and results["arc-easy"]["chance"] == pytest.approx(1 / 3)
    assert results["arithmetic"]["n"] == 2 and results["arithmetic"]["kind"] == "exact_match"
    code, out = run(capsys, *argv, "--max-tokens", "4")
    assert out.splitlines()[0] == "| task | kind | n | accuracy | chance |"
    assert out.splitlines()[2].startswith("| arc-easy | multiple_choice | 3 | ")


def test_chat_argument_errors(capsys, checkpoint, tmp_path):
    with pytest.raises(EvalError, match="nothing to evaluate"):
        run(capsys, "chat", "--checkpoint", str(checkpoint))
    with pytest.raises(EvalError, match="unknown task 'trivia'"):
        run(capsys, "chat", "--checkpoint", str(checkpoint), "--task", f"trivia={tmp_path}/t.jsonl")
    with pytest.raises(SystemExit):
        run(capsys, "chat", "--checkpoint", str(checkpoint), "--task", "arc.jsonl")
    assert "expected NAME=PATH" in capsys.readouterr().err


# ---- tokenizer ----------------------------------------------------------------------------------------
def test_tokenizer_compares_with_the_previous_tokenizer(capsys, tmp_path, small_tokenizer):
    from nanochat.tokenizer import Tokenizer

    small_tokenizer.save(tmp_path / "new")
    Tokenizer.train_from_iterator(TRAIN_DOCS, 270).save(tmp_path / "old")
    (tmp_path / "a.txt").write_text(A_TEXT)
    (tmp_path / "b.txt").write_text("café 你好 🦀 12345")
    argv = ["tokenizer", "--tokenizer", str(tmp_path / "new"), "--previous", str(tmp_path / "old")]
    argv += ["--text", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--no-baselines"]
    code, out = run(capsys, *argv, "--json")
    assert code == 0
    report = json.loads(out)
    assert list(report["bytes"]) == ["a.txt", "b.txt"] and list(report["encoders"]) == ["ours", "previous"]
    assert report["encoders"]["ours"]["tokens"]["a.txt"] == len(small_tokenizer.encode(A_TEXT))
    code, out = run(capsys, *argv)
    assert out.splitlines()[2].startswith("| a.txt | 43 | ")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(EvalError, match=r"latin1\.txt: not UTF-8 text"):
        run(capsys, "tokenizer", "--tokenizer", str(tmp_path / "new"), "--text", str(tmp_path / "latin1.txt"))
    with pytest.raises(EvalError, match="text file not found"):
        run(capsys, "tokenizer", "--tokenizer", str(tmp_path / "new"), "--text", str(tmp_path / "no.txt"))
