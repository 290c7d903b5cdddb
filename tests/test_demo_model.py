"""The bundled demo model (models/demo): loads with every entry point, chats, beats chance, says who it is
and uses the calculator (scored live on the held-out prompts and questions, not read from the report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanochat.checkpoint import load_checkpoint
from nanochat.cli import main
from nanochat.data.conversations import load_conversations
from nanochat.data.synthetic import HELDOUT_IDENTITY_PROMPTS, HELDOUT_OTHER_PROMPTS, NAME, heldout_arithmetic
from nanochat.engine import Engine, SamplingParams
from nanochat.eval.chat_eval import assistant_end_rate, generate_replies, mention_rate, run_chat_eval
from nanochat.eval.tasks import Task

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMO)


def test_demo_checkpoint_is_small_and_complete():
    files = {p.name for p in DEMO.iterdir()}
    assert {"tokenizer.pkl", "token_bytes.pt", "report.md", "report.json", "heldout.jsonl"} <= files
    models = sorted(DEMO.glob("model_*.pt"))
    assert len(models) == 1 and not list(DEMO.glob("optim_*"))
    assert models[0].stat().st_size <= 10 * 1024 * 1024


def test_demo_answers_held_out_prompts_with_text_then_assistant_end(demo):
    held_out = load_conversations(DEMO / "heldout.jsonl")
    assert len(held_out) >= 100
    rate = assistant_end_rate(demo.model, demo.tokenizer, held_out, max_tokens=64)
    assert rate >= 0.9, rate


def test_demo_report_shows_it_beats_the_baselines():
    figures = json.loads((DEMO / "report.json").read_text())
    assert figures["base"]["bpb"] < figures["base"]["unigram_bpb"] - 0.5
    assert figures["chat"]["assistant_end_rate"] >= 0.9
    assert "unigram baseline" in (DEMO / "report.md").read_text()


def test_demo_says_it_is_nanochat_to_held_out_identity_prompts(demo):
    assert len(HELDOUT_IDENTITY_PROMPTS) >= 20
    rate, replies = mention_rate(demo.model, demo.tokenizer, HELDOUT_IDENTITY_PROMPTS, NAME, max_tokens=64)
    assert rate >= 0.8, list(zip(HELDOUT_IDENTITY_PROMPTS, replies, strict=True))
    greeting = Task(kind="exact_match", prompt="Hello, who are you?", answer="")
    [reply] = generate_replies(demo.model, demo.tokenizer, [greeting], max_tokens=64)
    assert NAME in reply.casefold(), reply


def test_demo_does_not_introduce_itself_to_every_question(demo):
    """The identity answers are easy to learn; without the small-talk data the model gave them to 75% of
    questions about other things ("What is your favorite food?" -> "I am nanochat...")."""
    rate, replies = mention_rate(demo.model, demo.tokenizer, HELDOUT_OTHER_PROMPTS, NAME, max_tokens=64)
    assert rate <= 0.4, list(zip(HELDOUT_OTHER_PROMPTS, replies, strict=True))


ARITHMETIC = "arithmetic, 2-3 digit operands (calculator tool)"


def test_demo_calls_the_calculator_for_held_out_arithmetic(demo):
    tok = demo.tokenizer
    engine = Engine(demo.model, tok)
    opened_with_a_call = 0
    for task in heldout_arithmetic()[ARITHMETIC]:
        prompt = tok.render_for_completion(task.conversation())
        request = engine.begin(prompt, SamplingParams(max_tokens=1, temperature=0.0, tools=True))
        while request.prefill_remaining:
            engine.prefill(request)
        while not request.done:
            engine.decode_step()
        opened_with_a_call += request.continuations[0].tokens == [tok.encode_special("<|python_start|>")]
    assert opened_with_a_call >= 45, opened_with_a_call


def test_demo_answers_held_out_arithmetic_with_the_calculator(demo):
    tasks = {ARITHMETIC: heldout_arithmetic()[ARITHMETIC]}
    assert len(tasks[ARITHMETIC]) == 50
    result = run_chat_eval(demo.model, demo.tokenizer, tasks, max_tokens=64)[ARITHMETIC]
    assert result["accuracy"] >= 0.8, result


def test_demo_report_is_this_models(demo):
    figures = json.loads((DEMO / "report.json").read_text())
    assert figures["chat"]["step"] == demo.step
    assert figures["chat"]["identity"]["score"] >= 0.8
    assert figures["chat"]["identity"]["prompts"] == len(HELDOUT_IDENTITY_PROMPTS)
    assert figures["chat"]["off_topic_identity"]["score"] <= 0.4
    assert figures["chat"]["tasks"][ARITHMETIC]["accuracy"] >= 0.8


def test_demo_chats_through_the_engine(demo):
    tok = demo.tokenizer
    prompt = tok.render_for_completion(
        {
            "messages": [
                {"role": "user", "content": "Hello, how are you?"},
                {"role": "assistant", "content": ""},
            ]
        }
    )
    engine = Engine(demo.model, tok)
    request = engine.begin(prompt, SamplingParams(max_tokens=64, temperature=0.0))
    events = []
    while request.prefill_remaining:
        events += engine.prefill(request)
    while not request.done:
        events += engine.decode_step()
    text = "".join(e.text for e in events)
    assert text.strip(), "the demo model replied with nothing"
    assert events[-1].finish_reason == "stop" and events[-1].token == tok.encode_special("<|assistant_end|>")


def test_demo_works_with_the_cli(demo, capsys):
    assert (
        main(["sample", "--checkpoint", str(DEMO), "--prompt", "The LORD", "--max-tokens", "8", "--ids"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_ids"] == demo.tokenizer.encode("The LORD", prepend="<|bos|>")
    assert 1 <= len(out["tokens"]) <= 8
    assert out["text"] == demo.tokenizer.decode(out["tokens"])
