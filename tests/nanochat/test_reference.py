"""Numbers computed by the public nanochat code (tests/data/nanochat-ref, see its SOURCE.md) reproduced
exactly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint import load_checkpoint
from nanochat.engine import Engine

SHA256SUMS = Path(__file__).resolve().parents[1] / "data" / "nanochat-ref" / "SHA256SUMS"


@pytest.fixture(scope="module")
def model_a(reference_dir):
    return load_checkpoint(reference_dir / "modelA")


@pytest.fixture(scope="module")
def generation(expected):
    return expected["generation"]


def test_the_fixture_files_are_the_ones_nanochat_wrote(reference_dir):
    """Byte for byte, as listed in the repository's copy (also for NANOCHAT_REF_FIXTURES): a re-saved or
    LFS-filtered copy would change what the tests compare with."""
    for line in SHA256SUMS.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((reference_dir / name).read_bytes()).hexdigest() == digest, name


def test_loads_strict_in_fp32(model_a, reference_dir, expected):
    assert model_a.step == 30
    assert model_a.model.config.to_dict() == expected["model_config"]
    stored = torch.load(reference_dir / "modelA" / "model_000030.pt", weights_only=True)
    assert list(model_a.model.state_dict()) == list(stored)
    assert {str(p.dtype) for p in model_a.model.parameters()} == set(expected["loaded_param_dtypes"])


def test_forward_logits_match(model_a, reference_dir, expected):
    forward = expected["forward"]
    ids = torch.tensor([forward["input_ids"]])
    reference = torch.load(reference_dir / "modelA" / forward["logits_file"], weights_only=True)
    with torch.no_grad():
        logits = model_a.model(ids)
        loss = model_a.model(ids[:, :-1], ids[:, 1:])
    assert list(logits.shape) == forward["logits_shape"]
    assert (logits - reference).abs().max().item() <= 1e-4
    last = logits[0, -1]
    assert last.argmax().item() == forward["last_position_argmax"]
    assert logits[0].argmax(-1).tolist() == forward["argmax_per_position"]
    assert last.topk(8).indices.tolist() == forward["last_position_top8"]["ids"]
    assert last.double().sum().item() == pytest.approx(forward["last_position_sum"], abs=1e-3)
    assert loss.item() == pytest.approx(forward["loss_inputs_first19_targets_last19"], abs=1e-5)


def test_tokenizer_encodes_the_generation_prompt(model_a, generation):
    ids = model_a.tokenizer.encode(generation["prompt_text"], prepend="<|bos|>")
    assert ids == generation["prompt_ids"]


@pytest.mark.parametrize(
    "case", ["engine_greedy", "engine_sample_t1_k50_seed42", "engine_sample_3rows_t1_k50_seed42"]
)
def test_engine_tokens_and_masks(model_a, generation, case):
    expected = generation[case]
    kwargs = expected["kwargs"]
    engine = Engine(model_a.model, model_a.tokenizer, max_batch=4)
    columns = list(engine.generate(generation["prompt_ids"], **kwargs))
    rows = [[c[0][i] for c in columns] for i in range(kwargs["num_samples"])]
    masks = [[c[1][i] for c in columns] for i in range(kwargs["num_samples"])]
    assert rows == expected.get("rows", [expected.get("tokens")])
    if "masks" in expected:
        assert masks[0] == expected["masks"]
    if "text" in expected:
        assert model_a.tokenizer.decode(rows[0]) == expected["text"]


@pytest.mark.parametrize("case", ["model_generate_greedy", "model_generate_sample_t1_k50_seed42"])
def test_reference_sampler_without_cache(model_a, generation, case):
    expected = generation[case]
    tokens = list(model_a.model.generate(generation["prompt_ids"], **expected["kwargs"]))
    assert tokens == expected["tokens"]
    if "text" in expected:
        assert model_a.tokenizer.decode(tokens) == expected["text"]


def test_greedy_on_chat_prompt(model_a, expected, generation):
    case = generation["engine_greedy_chat_prompt"]
    prompt = model_a.tokenizer.render_for_completion(expected["tokenizer"]["conversation"])
    assert prompt == case["prompt_ids"]
    engine = Engine(model_a.model, model_a.tokenizer)
    tokens = [column[0] for column, _ in engine.generate(prompt, **case["kwargs"])]
    assert tokens == case["tokens"]


def test_bf16_stored_embedding_loads_like_nanochat(reference_dir, expected, tmp_path):
    """GPU-trained checkpoints store wte in bf16; on CPU nanochat converts it to fp32 before loading."""
    source = reference_dir / "modelA"
    state = torch.load(source / "model_000030.pt", weights_only=True)
    state["transformer.wte.weight"] = state["transformer.wte.weight"].bfloat16()
    torch.save(state, tmp_path / "model_000030.pt")
    (tmp_path / "meta_000030.json").write_text((source / "meta_000030.json").read_text())
    for name in ("tokenizer.pkl", "token_bytes.pt"):
        (tmp_path / name).write_bytes((reference_dir / "tokenizer" / name).read_bytes())
    loaded = load_checkpoint(tmp_path)
    wte = loaded.model.transformer.wte.weight
    assert wte.dtype == torch.float32
    assert torch.equal(wte, state["transformer.wte.weight"].float())
    ids = torch.tensor([expected["forward"]["input_ids"]])
    reference = torch.load(source / "forward_logits.pt", weights_only=True)
    with torch.no_grad():
        logits = loaded.model(ids)
    # bf16 rounding of the embedding moves logits a little, not the model's predictions
    assert (logits - reference).abs().max().item() < 0.1
    assert logits[0].argmax(-1).tolist() == expected["forward"]["argmax_per_position"]
