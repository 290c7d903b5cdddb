"""`nanochat export hf`: the folder transformers loads is the demo model, token for token.

Tolerance: logits (capped at ±15) agree within LOGITS_TOLERANCE = 0.1 absolute, mean difference below
5e-3. The whole difference is nanochat's bf16-rounded rotary table: with transformers' cos/sin rounded the
same way, the logits are bit-identical (test_logits_are_identical_with_nanochats_rotary_rounding).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat.checkpoint import CheckpointError, load_checkpoint
from nanochat.cli import main
from nanochat.engine import Engine
from nanochat.hf_export import LOGITS_TOLERANCE, ExportError, export_hf
from nanochat.tokenizer import SPECIAL_TOKENS

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "demo"
HELDOUT = [json.loads(line) for line in (DEMO / "heldout.jsonl").read_text().splitlines() if line.strip()]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def demo_export() -> Path:
    """The demo model exported once per test process. The other HF test modules import this function
    (pytest may load this file twice under two names), so the cache is a folder, not a variable."""
    root = Path(tempfile.gettempdir()) / f"nanochat-hf-demo-{os.getpid()}"
    if not (root / "complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        export_hf(DEMO, root / "demo")
        (root / "complete").touch()
        atexit.register(shutil.rmtree, root, True)
    return root / "demo"


@pytest.fixture(scope="module")
def ours():
    return load_checkpoint(DEMO)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(demo_export(), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_export())


def test_config_states_the_architecture():
    config = json.loads((demo_export() / "config.json").read_text())
    assert config["architectures"] == ["NanoChatForCausalLM"]
    assert (config["hidden_act"], config["final_logit_softcapping"]) == ("relu2", 15.0)
    assert config["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "default"}
    assert config["tie_word_embeddings"] is False
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (3, 192, 768)


@torch.inference_mode()
def test_logits_match_within_the_stated_tolerance(ours, hf_model):
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, ours.model.config.vocab_size, (4, ours.model.config.sequence_len), generator=g)
    a, b = ours.model(idx), hf_model(idx).logits
    diff = (a - b).abs()
    assert diff.max() <= LOGITS_TOLERANCE
    assert diff.mean() < 5e-3
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.99


@torch.inference_mode()
def test_logits_are_identical_with_nanochats_rotary_rounding(ours, hf_model, monkeypatch):
    from transformers.models.nanochat import modeling_nanochat

    original = modeling_nanochat.NanoChatRotaryEmbedding.forward

    def bf16_tables(self, x, position_ids):
        cos, sin = original(self, x, position_ids)
        return cos.bfloat16().to(x.dtype), sin.bfloat16().to(x.dtype)

    monkeypatch.setattr(modeling_nanochat.NanoChatRotaryEmbedding, "forward", bf16_tables)
    idx = torch.randint(0, ours.model.config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hf_model(idx).logits, ours.model(idx), rtol=0, atol=1e-5)


def test_greedy_tokens_equal_between_our_engine_and_transformers_generate(ours, hf_model):
    engine = Engine(ours.model, ours.tokenizer, max_batch=1)
    for conversation in HELDOUT[:6]:
        prompt = ours.tokenizer.render_for_completion(conversation)
        mine = [column[0] for column, _ in engine.generate(prompt, max_tokens=24, temperature=0.0)]
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
        theirs = out[0, len(prompt) :].tolist()
        assert mine == theirs


_text = st.text(st.characters(codec="utf-8"), max_size=200)
_special = st.sampled_from(SPECIAL_TOKENS)


@settings(max_examples=150, deadline=None)
@given(st.lists(_text | _special, max_size=6).map("".join))
def test_auto_tokenizer_encodes_any_text_like_ours(text):
    from transformers import AutoTokenizer

    tok = _cached_auto_tokenizer(AutoTokenizer)
    theirs = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert theirs == _cached_ours().encode(text)
    assert tok.decode(theirs) == _cached_ours().decode(theirs)


@settings(max_examples=100, deadline=None)
@given(_text.filter(lambda t: "<|" not in t))
def test_default_encoding_is_the_same_for_plain_text(text):
    from transformers import AutoTokenizer

    ids = _cached_auto_tokenizer(AutoTokenizer)(text, add_special_tokens=False)["input_ids"]
    assert ids == _cached_ours().encode(text)


@functools.cache
def _cached_auto_tokenizer(auto):
    return auto.from_pretrained(demo_export())


@functools.cache
def _cached_ours():
    return load_checkpoint(DEMO).tokenizer


def test_chat_template_renders_like_render_conversation(ours, hf_tokenizer):
    tool_use = {
        "messages": [
            {"role": "system", "content": "Be brief.\n\nAlways."},
            {"role": "user", "content": "What is 2+3?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me compute. "},
                    {"type": "python", "text": "2+3"},
                    {"type": "python_output", "text": "5"},
                    {"type": "text", "text": "It is 5."},
                ],
            },
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You're welcome."},
        ]
    }
    for conversation in [*HELDOUT, tool_use]:
        ids, mask = ours.tokenizer.render_conversation(conversation)
        out = hf_tokenizer.apply_chat_template(
            conversation["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert list(out["input_ids"]) == ids
        assert list(out["assistant_masks"]) == mask
        prompt = hf_tokenizer.apply_chat_template(
            conversation["messages"][:-1], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        assert list(prompt) == ours.tokenizer.render_for_completion(conversation)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "I speak first"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}],
        [{"role": "system", "content": "alone"}],
    ],
)
def test_chat_template_refuses_what_nanochat_refuses(hf_tokenizer, messages):
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError):
        hf_tokenizer.apply_chat_template(messages, tokenize=False)


def test_export_refuses_a_non_empty_folder_and_a_missing_checkpoint(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not empty"):
        export_hf(DEMO, tmp_path / "out")
    with pytest.raises(CheckpointError):
        export_hf(tmp_path / "no-such-checkpoint", tmp_path / "new")


def test_cli_export_prints_one_line_with_the_measured_difference(tmp_path, capsys):
    assert main(["export", "hf", "--checkpoint", str(DEMO), "--out", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("export hf: 2,113,536 parameters, max logit difference ")
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (
        tmp_path / "hf" / "tokenizer.json"
    ).is_file()
    assert main(["export", "hf", "--checkpoint", str(DEMO), "--out", str(tmp_path / "hf")]) == 1
    assert "is not empty" in capsys.readouterr().err
