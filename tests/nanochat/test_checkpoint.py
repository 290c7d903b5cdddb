"""Tests for nanochat/checkpoint.py: round trips through real files, every tokenizer location, every error a
user can cause, Hugging Face repo ids resolved by the real huggingface_hub from a local cache, atomic saves,
and the reference checkpoint written by the public nanochat code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from nanochat.checkpoint import (
    CheckpointError,
    build_model,
    find_last_step,
    find_tokenizer_dir,
    load_checkpoint,
    meta_path,
    model_path,
    optimizer_path,
    read_meta,
    resolve_source,
    save_checkpoint,
)
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer

PROBE_TEXT = "the quick brown fox jumps over the lazy dog café 你好"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_raw(directory: Path, state: dict, model_config: dict, tokenizer: Tokenizer, step: int = 10) -> Path:
    """A checkpoint written by hand (no save_checkpoint): `state` goes into the model file as it is."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, model_path(directory, step))
    meta_path(directory, step).write_text(json.dumps({"step": step, "model_config": model_config}))
    tokenizer.save(directory)
    return directory


def probe_ids(tokenizer: Tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(PROBE_TEXT, prepend=tokenizer.get_bos_token_id())])


def assert_same_weights(loaded: GPT, expected: dict[str, torch.Tensor]) -> None:
    state = loaded.state_dict()
    assert list(state) == list(expected)
    for key, tensor in expected.items():
        assert state[key].dtype == tensor.dtype, key
        assert torch.equal(state[key], tensor), key


class Payload:
    """Unpickling this would create `marker` (it pickles as a call to `open(marker, "w")`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def model(make_model) -> GPT:
    return make_model()


@pytest.fixture
def checkpoint_dir(tmp_path: Path, model: GPT, write_checkpoint) -> Path:
    return write_checkpoint(tmp_path / "ckpt", model, step=10)


@pytest.fixture(scope="module")
def other_tokenizer() -> Tokenizer:
    """A second, much smaller tokenizer (its vocab does not match the test models)."""
    tokenizer = Tokenizer.train_from_iterator(["abc abd abe"] * 20, vocab_size=280)
    return tokenizer


# --- round trips ----------------------------------------------------------------------------------------


def test_save_load_round_trip(checkpoint_dir: Path, model: GPT, small_tokenizer: Tokenizer) -> None:
    loaded = load_checkpoint(checkpoint_dir)

    assert loaded.step == 10
    assert loaded.directory == checkpoint_dir
    assert loaded.meta == {
        "step": 10,
        "model_config": model.config.to_dict(),
        "user_config": {"made_by": "tests"},
    }
    assert loaded.model.config == model.config
    assert_same_weights(loaded.model, model.state_dict())
    assert not loaded.model.training
    assert torch.equal(loaded.model.cos, model.cos) and torch.equal(loaded.model.sin, model.sin)
    assert loaded.tokenizer.get_vocab_size() == small_tokenizer.get_vocab_size()
    assert loaded.tokenizer.encode(PROBE_TEXT) == small_tokenizer.encode(PROBE_TEXT)

    ids = probe_ids(small_tokenizer)
    with torch.no_grad():
        expected_logits = model(ids)
        logits = loaded.model(ids)
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.equal(logits, expected_logits)


def mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """The address ranges of this process that map `path` (from /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def eager_model(directory: Path, step: int = 10) -> GPT:
    """The model as the loader built it before memory mapping: the whole file read into memory."""
    state = torch.load(model_path(directory, step), map_location="cpu", weights_only=True)
    config = GPTConfig.from_dict(read_meta(directory, step)["model_config"])
    return build_model(config, state)


def test_mapped_and_eagerly_read_weights_give_identical_models(checkpoint_dir: Path, model: GPT) -> None:
    mapped, eager = load_checkpoint(checkpoint_dir).model, eager_model(checkpoint_dir)

    assert_same_weights(mapped, eager.state_dict())
    ids = torch.randint(0, model.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(mapped(ids), eager(ids))
        assert torch.equal(mapped(ids), model(ids))


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc/self/maps")
def test_weights_in_the_dtype_asked_for_are_used_where_the_file_maps_them(checkpoint_dir: Path) -> None:
    """fp32 weights loaded as fp32 on the CPU are not copied: they lie in a mapping of the model file.
    Converted ones (bf16 asked for) are copies, so the file's mapping holds none of them."""
    path = model_path(checkpoint_dir, 10)
    loaded = load_checkpoint(checkpoint_dir)
    ranges = mapped_ranges(path)
    assert ranges, "the model file is not mapped"
    for name, tensor in loaded.model.state_dict().items():
        assert any(start <= tensor.data_ptr() < end for start, end in ranges), name

    bf16 = load_checkpoint(checkpoint_dir, dtype=torch.bfloat16).model
    ranges = mapped_ranges(path)
    assert not any(start <= p.data_ptr() < end for p in bf16.parameters() for start, end in ranges)


def test_a_file_in_the_legacy_format_is_read_whole(tmp_path: Path, model: GPT, small_tokenizer) -> None:
    """torch's pre-1.6 (non-zip) format cannot be memory-mapped: it is read as before, to the same model."""
    directory = tmp_path / "legacy"
    write_raw(directory, model.state_dict(), model.config.to_dict(), small_tokenizer)
    torch.save(model.state_dict(), model_path(directory, 10), _use_new_zipfile_serialization=False)
    assert not model_path(directory, 10).read_bytes().startswith(b"PK")

    loaded = load_checkpoint(directory)
    assert_same_weights(loaded.model, model.state_dict())


def test_latest_step_by_default_and_explicit_step(tmp_path: Path, make_model, write_checkpoint) -> None:
    models = {step: make_model(seed=step) for step in (5, 20, 100)}
    directory = tmp_path / "ckpt"
    for step, m in models.items():
        write_checkpoint(directory, m, step=step)
    # a temp file left by an interrupted save must not count as a step
    (directory / ".model_000200.pt.abc123").write_bytes(b"partial")

    assert find_last_step(directory) == 100
    latest = load_checkpoint(directory)
    assert latest.step == 100
    assert_same_weights(latest.model, models[100].state_dict())

    middle = load_checkpoint(directory, step=20)
    assert middle.step == 20
    assert middle.meta["step"] == 20
    assert_same_weights(middle.model, models[20].state_dict())
    assert not torch.equal(middle.model.lm_head.weight, latest.model.lm_head.weight)

    with pytest.raises(CheckpointError, match="000007"):
        load_checkpoint(directory, step=7)


def test_orig_mod_prefix_is_stripped(tmp_path: Path, model: GPT, small_tokenizer: Tokenizer) -> None:
    prefixed = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    directory = write_raw(tmp_path / "compiled", prefixed, model.config.to_dict(), small_tokenizer)
    assert all(k.startswith("_orig_mod.") for k in torch.load(model_path(directory, 10), weights_only=True))

    loaded = load_checkpoint(directory)
    assert_same_weights(loaded.model, model.state_dict())


def test_save_checkpoint_strips_orig_mod_prefix(tmp_path: Path, model: GPT) -> None:
    prefixed = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path, 3, prefixed, {"model_config": model.config.to_dict()})
    stored = torch.load(model_path(tmp_path, 3), weights_only=True)
    assert list(stored) == list(model.state_dict())


def test_bf16_embedding_loads_as_float32_or_bf16(
    tmp_path: Path, model: GPT, small_tokenizer: Tokenizer
) -> None:
    """GPU-trained nanochat checkpoints store wte in bf16 and everything else in fp32."""
    state = dict(model.state_dict())
    state["transformer.wte.weight"] = state["transformer.wte.weight"].bfloat16()
    directory = write_raw(tmp_path / "gpu", state, model.config.to_dict(), small_tokenizer)
    stored = torch.load(model_path(directory, 10), weights_only=True)
    assert stored["transformer.wte.weight"].dtype == torch.bfloat16

    loaded = load_checkpoint(directory)
    params = dict(loaded.model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32}
    wte = params["transformer.wte.weight"]
    assert torch.equal(wte, state["transformer.wte.weight"].float())
    assert not torch.equal(wte, model.transformer.wte.weight)  # bf16 rounding really happened
    assert torch.equal(params["lm_head.weight"], model.lm_head.weight)

    half = load_checkpoint(directory, dtype=torch.bfloat16)
    half_params = dict(half.model.named_parameters())
    assert {p.dtype for p in half_params.values()} == {torch.bfloat16}
    assert torch.equal(half_params["transformer.wte.weight"], state["transformer.wte.weight"])
    assert torch.equal(half_params["lm_head.weight"], model.lm_head.weight.bfloat16())
    with torch.no_grad():
        logits = half.model(probe_ids(small_tokenizer))
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()


# --- model configs ----------------------------------------------------------------------------------------


def test_grouped_query_attention_checkpoint(
    tmp_path: Path, make_model, write_checkpoint, small_tokenizer
) -> None:
    model = make_model(n_head=4, n_kv_head=2, n_embd=64)
    directory = write_checkpoint(tmp_path / "gqa", model)

    loaded = load_checkpoint(directory)
    assert loaded.model.config.n_kv_head == 2
    head_dim = 64 // 4
    for block in loaded.model.transformer.h:
        assert tuple(block.attn.c_q.weight.shape) == (4 * head_dim, 64)
        assert tuple(block.attn.c_k.weight.shape) == (2 * head_dim, 64)
        assert tuple(block.attn.c_v.weight.shape) == (2 * head_dim, 64)
    assert_same_weights(loaded.model, model.state_dict())
    ids = probe_ids(small_tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), model(ids))


def test_meta_without_n_kv_head_means_n_head(tmp_path: Path, model: GPT, write_checkpoint) -> None:
    directory = write_checkpoint(tmp_path / "old", model)
    meta = json.loads(meta_path(directory, 10).read_text())
    del meta["model_config"]["n_kv_head"]
    meta_path(directory, 10).write_text(json.dumps(meta))

    loaded = load_checkpoint(directory)
    assert loaded.model.config.n_kv_head == loaded.model.config.n_head == 4
    assert_same_weights(loaded.model, model.state_dict())


def test_gqa_weights_with_meta_lacking_n_kv_head_is_a_shape_error(
    tmp_path: Path, make_model, write_checkpoint
) -> None:
    directory = write_checkpoint(tmp_path / "gqa", make_model(n_head=4, n_kv_head=2))
    meta = json.loads(meta_path(directory, 10).read_text())
    del meta["model_config"]["n_kv_head"]
    meta_path(directory, 10).write_text(json.dumps(meta))

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    message = str(info.value)
    assert "transformer.h.0.attn.c_k.weight has shape [32, 64]" in message
    assert "expects [64, 64]" in message


# --- tokenizer locations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint_rel", "tokenizer_rel"),
    [
        ("ckpt", "ckpt"),  # inside the checkpoint folder
        ("ckpt", "ckpt/tokenizer"),  # a tokenizer/ folder inside it
        ("runs/d2", "runs/tokenizer"),  # tokenizer/ beside it
        ("base/base_checkpoints/d2", "base/tokenizer"),  # nanochat's base dir, two levels up
    ],
)
def test_tokenizer_locations(
    tmp_path: Path, model: GPT, write_checkpoint, small_tokenizer, checkpoint_rel: str, tokenizer_rel: str
) -> None:
    directory = write_checkpoint(tmp_path / checkpoint_rel, model, tokenizer_dir=tmp_path / tokenizer_rel)
    assert find_tokenizer_dir(directory) == (tmp_path / tokenizer_rel).resolve()
    loaded = load_checkpoint(directory)
    assert loaded.tokenizer.encode(PROBE_TEXT) == small_tokenizer.encode(PROBE_TEXT)


def test_tokenizer_inside_the_folder_wins(
    tmp_path: Path, model: GPT, write_checkpoint, other_tokenizer
) -> None:
    directory = write_checkpoint(tmp_path / "base" / "base_checkpoints" / "d2", model)
    other_tokenizer.save(tmp_path / "base" / "tokenizer")  # wrong vocab: loading would fail if chosen
    assert find_tokenizer_dir(directory) == directory.resolve()
    assert load_checkpoint(directory).tokenizer.get_vocab_size() == model.config.vocab_size


def test_no_tokenizer_lists_where_it_looked(tmp_path: Path, model: GPT) -> None:
    directory = tmp_path / "a" / "b" / "ckpt"
    save_checkpoint(directory, 10, model.state_dict(), {"model_config": model.config.to_dict()})

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    message = str(info.value)
    assert "no tokenizer.pkl" in message
    for place in (
        directory,
        directory / "tokenizer",
        tmp_path / "a" / "b" / "tokenizer",
        tmp_path / "a" / "tokenizer",
    ):
        assert str(place.resolve()) in message


# --- errors a user can cause ----------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found") as info:
        load_checkpoint(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_file_instead_of_folder(checkpoint_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="source must be a folder, got a file"):
        load_checkpoint(model_path(checkpoint_dir, 10))


def test_folder_without_model_files(tmp_path: Path, small_tokenizer: Tokenizer) -> None:
    small_tokenizer.save(tmp_path)
    with pytest.raises(CheckpointError, match=r"no model_NNNNNN\.pt files in"):
        load_checkpoint(tmp_path)


def test_meta_missing(checkpoint_dir: Path) -> None:
    meta_path(checkpoint_dir, 10).unlink()
    with pytest.raises(CheckpointError, match=r"missing meta file .*meta_000010\.json"):
        load_checkpoint(checkpoint_dir)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON"),
        (b"\xff\xfe\x00garbage", "is not valid JSON"),
        ("[1, 2, 3]", "has no model_config object"),
        ('{"step": 10}', "has no model_config object"),
        ('{"model_config": [256, 2048]}', "has no model_config object"),
    ],
)
def test_bad_meta(checkpoint_dir: Path, text: str | bytes, message: str) -> None:
    path = meta_path(checkpoint_dir, 10)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(checkpoint_dir)
    assert "meta_000010.json" in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_embd": 66, "n_head": 4}, "n_embd 66 is not divisible by n_head 4"),
        ({"n_head": 4, "n_kv_head": 3}, "n_head 4 is not a multiple of n_kv_head 3"),
        ({"n_embed": 64}, "unknown model_config keys: n_embed"),
        ({"n_layer": None}, "model_config is missing: n_layer"),
        ({"n_layer": "2"}, "n_layer must be a positive integer, got '2'"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer, got 0"),
    ],
)
def test_bad_model_config(checkpoint_dir: Path, change: dict, message: str) -> None:
    path = meta_path(checkpoint_dir, 10)
    meta = json.loads(path.read_text())
    for key, value in change.items():
        if value is None:
            del meta["model_config"][key]
        else:
            meta["model_config"][key] = value
    path.write_text(json.dumps(meta))

    with pytest.raises(CheckpointError, match="bad model_config") as info:
        load_checkpoint(checkpoint_dir)
    assert message in str(info.value)
    assert "meta_000010.json" in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "pickle"])
def test_corrupt_model_file(checkpoint_dir: Path, damage: str) -> None:
    """One line (the server logs it as its reason to stop), however long torch's own message is."""
    path = model_path(checkpoint_dir, 10)
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": b"not a zip file" * 50, "empty": b""}
    damaged["pickle"] = b"x\n"  # not a zip: torch's weights-only unpickler explains at length
    path.write_bytes(damaged[damage])
    with pytest.raises(CheckpointError, match="is corrupt or not a tensor-only state dict") as info:
        load_checkpoint(checkpoint_dir)
    assert "model_000010.pt" in str(info.value)
    assert "\n" not in str(info.value), str(info.value)


def test_model_file_with_code_is_refused_without_running_it(
    tmp_path: Path, model: GPT, small_tokenizer: Tokenizer
) -> None:
    marker = tmp_path / "pwned"
    state = {**model.state_dict(), "payload": Payload(marker)}
    directory = write_raw(tmp_path / "evil", state, model.config.to_dict(), small_tokenizer)

    with pytest.raises(CheckpointError, match="is corrupt or not a tensor-only state dict"):
        load_checkpoint(directory)
    assert not marker.exists()

    # the payload is live: an unsafe load really would have run it
    torch.load(model_path(directory, 10), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "payload",
    [[1, 2, 3], {"transformer.wte.weight": 3}, {"note": "hello"}, torch.zeros(3)],
    ids=["list", "int-value", "str-value", "bare-tensor"],
)
def test_model_file_without_a_tensor_dict(
    tmp_path: Path, model: GPT, small_tokenizer: Tokenizer, payload
) -> None:
    directory = write_raw(tmp_path / "odd", payload, model.config.to_dict(), small_tokenizer)
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        load_checkpoint(directory)


def test_vocab_mismatch(tmp_path: Path, make_model, write_checkpoint, small_tokenizer: Tokenizer) -> None:
    vocab = small_tokenizer.get_vocab_size()
    directory = write_checkpoint(tmp_path / "ckpt", make_model(vocab_size=vocab + 8))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    assert str(info.value) == (
        f"vocab mismatch: tokenizer has {vocab} tokens, model_config.vocab_size is {vocab + 8}"
    )


def test_unknown_keys(tmp_path: Path, model: GPT, small_tokenizer: Tokenizer) -> None:
    state = {**model.state_dict(), "transformer.extra.weight": torch.zeros(2)}
    directory = write_raw(tmp_path / "ckpt", state, model.config.to_dict(), small_tokenizer)
    with pytest.raises(CheckpointError, match=re.escape("unknown keys: transformer.extra.weight")) as info:
        load_checkpoint(directory)
    assert "missing keys" not in str(info.value)


def test_missing_keys(tmp_path: Path, model: GPT, small_tokenizer: Tokenizer) -> None:
    state = dict(model.state_dict())
    del state["lm_head.weight"], state["transformer.h.1.mlp.c_fc.weight"]
    directory = write_raw(tmp_path / "ckpt", state, model.config.to_dict(), small_tokenizer)
    with pytest.raises(
        CheckpointError, match=re.escape("missing keys: lm_head.weight, transformer.h.1.mlp.c_fc.weight")
    ):
        load_checkpoint(directory)


def test_wrong_shape(tmp_path: Path, model: GPT, small_tokenizer: Tokenizer) -> None:
    state = dict(model.state_dict())
    state["transformer.h.0.mlp.c_fc.weight"] = state["transformer.h.0.mlp.c_fc.weight"].T.contiguous()
    directory = write_raw(tmp_path / "ckpt", state, model.config.to_dict(), small_tokenizer)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    message = str(info.value)
    assert "transformer.h.0.mlp.c_fc.weight has shape [64, 256], model_config expects [256, 64]" in message


# --- Hugging Face repo ids --------------------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache folder, with the real huggingface_hub forced offline."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads these at import time; the env vars alone would not reach an imported module
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_repo(cache: Path, repo_id: str, checkpoint_dir: Path) -> Path:
    """Lay out `checkpoint_dir`'s files as a downloaded snapshot of `repo_id` in the hub cache."""
    owner, name = repo_id.split("/")
    repo = cache / f"models--{owner}--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in checkpoint_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    return snapshot


def test_repo_id_from_the_hub_cache(offline_hub: Path, checkpoint_dir: Path, model: GPT) -> None:
    snapshot = cache_repo(offline_hub, "someone/tiny-chat", checkpoint_dir)

    assert resolve_source("someone/tiny-chat", cache_dir=str(offline_hub)).resolve() == snapshot.resolve()
    loaded = load_checkpoint("someone/tiny-chat", cache_dir=str(offline_hub))
    assert loaded.directory.resolve() == snapshot.resolve()
    assert loaded.step == 10
    assert_same_weights(loaded.model, model.state_dict())

    # without cache_dir, the hub's default cache is used (what the CLI does)
    assert load_checkpoint("someone/tiny-chat").directory.resolve() == snapshot.resolve()


def test_repo_id_not_in_cache_while_offline(offline_hub: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        resolve_source("someone/not-downloaded", cache_dir=str(offline_hub))
    message = str(info.value)
    assert "someone/not-downloaded" in message
    assert "offline" in message and "cache" in message


def test_local_folder_wins_over_repo_id(
    tmp_path: Path, offline_hub: Path, monkeypatch: pytest.MonkeyPatch, checkpoint_dir: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someone").mkdir()
    checkpoint_dir.rename(tmp_path / "someone" / "tiny-chat")
    assert resolve_source("someone/tiny-chat") == Path("someone/tiny-chat")
    assert load_checkpoint("someone/tiny-chat").step == 10


@pytest.mark.parametrize(
    "source", ["./nope", "a/b/c", "/no/such/folder", "~/no-such-folder-here", "bad name/x"]
)
def test_not_a_folder_and_not_a_repo_id(
    tmp_path: Path, offline_hub: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        resolve_source(source)


# --- saving ---------------------------------------------------------------------------------------------


def test_save_checkpoint_files_per_rank(tmp_path: Path, model: GPT) -> None:
    meta = {"step": 10, "model_config": model.config.to_dict(), "val_bpb": 1.5}
    optim0 = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.01}]}
    optim1 = {"state": {0: {"exp_avg": torch.full((3,), 2.0)}}, "param_groups": [{"lr": 0.02}]}

    assert save_checkpoint(tmp_path, 10, model.state_dict(), meta, optimizer_state=optim0, rank=0) == tmp_path
    save_checkpoint(tmp_path, 10, model.state_dict(), meta, optimizer_state=optim1, rank=1)

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["meta_000010.json", "model_000010.pt", "optim_000010_rank0.pt", "optim_000010_rank1.pt"]
    assert optimizer_path(tmp_path, 10, 1).name == "optim_000010_rank1.pt"
    assert json.loads(meta_path(tmp_path, 10).read_text()) == meta
    stored = torch.load(model_path(tmp_path, 10), weights_only=True)
    assert list(stored) == list(model.state_dict())
    for key, tensor in model.state_dict().items():
        assert torch.equal(stored[key], tensor)
    for rank, optim in ((0, optim0), (1, optim1)):
        loaded = torch.load(optimizer_path(tmp_path, 10, rank), weights_only=True)
        assert loaded["param_groups"] == optim["param_groups"]
        assert torch.equal(loaded["state"][0]["exp_avg"], optim["state"][0]["exp_avg"])


def test_rank_1_writes_only_its_optimizer_state(tmp_path: Path, model: GPT) -> None:
    meta = {"model_config": model.config.to_dict()}
    save_checkpoint(tmp_path, 4, model.state_dict(), meta, optimizer_state={"step": torch.tensor(4)}, rank=1)
    assert [p.name for p in tmp_path.iterdir()] == ["optim_000004_rank1.pt"]
    save_checkpoint(tmp_path / "none", 4, model.state_dict(), meta, rank=1)
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())


def test_failed_save_leaves_no_temp_file_and_keeps_the_old_file(tmp_path: Path, model: GPT) -> None:
    meta = {"model_config": model.config.to_dict()}
    save_checkpoint(tmp_path, 10, model.state_dict(), meta, optimizer_state={"lr": 0.5})
    before = sorted(p.name for p in tmp_path.iterdir())
    old_optim = optimizer_path(tmp_path, 10).read_bytes()

    with pytest.raises(TypeError, match="cannot pickle"):
        save_checkpoint(tmp_path, 10, model.state_dict(), meta, optimizer_state={"lock": threading.Lock()})

    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert optimizer_path(tmp_path, 10).read_bytes() == old_optim


FULL_DISK_SAVE = """
import resource, signal, sys, torch
from nanochat.checkpoint import CheckpointError, save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk does
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    save_checkpoint(sys.argv[1], 2, {"w": torch.zeros(100_000)}, {"model_config": {}})
except CheckpointError as e:
    print(f"CheckpointError: {e}")
"""


def test_a_full_disk_is_a_checkpoint_error_and_leaves_no_file(tmp_path: Path) -> None:
    """torch.save reports a failed write as a RuntimeError ("unexpected pos"): a caller that handles
    CheckpointError (the commands print one line) must get one, naming the step and the folder."""
    command = [sys.executable, "-c", FULL_DISK_SAVE, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"CheckpointError: cannot write checkpoint step 2 to {tmp_path}"), result
    assert not any(tmp_path.iterdir())


def test_saved_files_are_readable_by_others(tmp_path: Path, model: GPT) -> None:
    """Atomic writes go through mkstemp (mode 0600); the final files must be shareable (0644)."""
    meta = {"step": 1, "model_config": model.config.to_dict()}
    save_checkpoint(tmp_path, 1, model.state_dict(), meta, optimizer_state={"x": torch.zeros(1)})
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"model_000001.pt": 0o644, "meta_000001.json": 0o644, "optim_000001_rank0.pt": 0o644}


def test_save_requires_model_config(tmp_path: Path, model: GPT) -> None:
    with pytest.raises(CheckpointError, match="model_config"):
        save_checkpoint(tmp_path, 1, model.state_dict(), {"step": 1})
    assert not any(tmp_path.iterdir())


# --- the reference checkpoint (written by the public nanochat code) ---------------------------------------


def test_reference_checkpoint_loads_strict(reference_dir: Path, expected: dict) -> None:
    directory = reference_dir / "modelA"
    loaded = load_checkpoint(directory)

    assert loaded.step == 30
    assert loaded.model.config.to_dict() == expected["model_config"]
    file_state = torch.load(directory / expected["checkpoint"], map_location="cpu", weights_only=True)
    assert_same_weights(loaded.model, file_state)
    assert sorted({str(p.dtype) for p in loaded.model.parameters()}) == expected["loaded_param_dtypes"]
    assert find_tokenizer_dir(directory) == (reference_dir / "tokenizer").resolve()

    forward = expected["forward"]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([forward["input_ids"]]))
    reference = torch.load(directory / forward["logits_file"], weights_only=True)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


def test_loading_builds_the_structure_without_computing_on_the_meta_device(tmp_path: Path) -> None:
    """The meta-device build runs no initialiser, no rotary computation and no `to_empty`: torch computes
    those on meta through its Python reference kernels, whose first use imports torch._dynamo (about a
    second of every server's start) and sympy (`to_empty`'s empty_like: about half a second). A fresh
    interpreter loads the demo model and must have imported neither."""
    demo = Path(__file__).resolve().parents[2] / "models" / "demo"
    script = (
        "import sys; from nanochat.checkpoint import load_checkpoint; "
        f"loaded = load_checkpoint({str(demo)!r}); "
        "assert not any(p.is_meta for p in loaded.model.parameters()); "
        "print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(demo.parents[1])},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False"
