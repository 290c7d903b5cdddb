"""The synthetic identity, small-talk and calculator conversations: deterministic, valid, held-out sets
kept apart."""

from __future__ import annotations

import operator
import re

from nanochat.calculator import evaluate
from nanochat.data.conversations import conversation_problem
from nanochat.data.synthetic import (
    HELDOUT_IDENTITY_PROMPTS,
    HELDOUT_OTHER_PROMPTS,
    IDENTITY_CONVERSATIONS,
    NAME,
    SMALL_TALK_CONVERSATIONS,
    TOOL_USE_CONVERSATIONS,
    heldout_arithmetic,
    identity_prompts,
    normalize_prompt,
    synthetic_conversations,
)

OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def test_the_same_seed_gives_the_same_conversations():
    first = synthetic_conversations(seed=0)
    assert synthetic_conversations(seed=0) == first
    assert synthetic_conversations(seed=1) != first
    assert len(first["identity"]) == IDENTITY_CONVERSATIONS
    assert len(first["tool_use"]) == TOOL_USE_CONVERSATIONS
    assert len(first["small_talk"]) == SMALL_TALK_CONVERSATIONS
    small = synthetic_conversations(seed=2, identity=5, tool_use=7, small_talk=3)
    assert (len(small["identity"]), len(small["tool_use"]), len(small["small_talk"])) == (5, 7, 3)


def test_every_conversation_is_valid_and_renders(small_tokenizer):
    generated = synthetic_conversations(seed=0, identity=200, tool_use=200, small_talk=200)
    for conversation in generated["identity"] + generated["tool_use"] + generated["small_talk"]:
        assert conversation_problem(conversation) is None, conversation
        ids, mask = small_tokenizer.render_conversation(conversation)
        assert len(ids) == len(mask) and any(mask)
    ids, mask = small_tokenizer.render_conversation(generated["tool_use"][0])
    for special in ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"):
        assert small_tokenizer.encode_special(special) in ids


def test_identity_replies_say_who_it_is():
    conversations = synthetic_conversations(seed=0)["identity"]
    prompts = {c["messages"][0]["content"] for c in conversations}
    assert len(prompts) >= 150  # many paraphrases, not a few questions repeated
    for conversation in conversations:
        reply = conversation["messages"][1]["content"]
        assert NAME in reply and len(reply) <= 160
    replies = " ".join(c["messages"][1]["content"] for c in conversations)
    for fact in ("2 million parameters", "calculator", "tiny", "this repo"):
        assert fact in replies
    for question in ("Hello, who are you?", "Are you ChatGPT?", "What can you do?", "How big are you?"):
        assert question in prompts


def test_held_out_identity_prompts_are_not_trained_on():
    assert len(HELDOUT_IDENTITY_PROMPTS) >= 20
    held_out = {normalize_prompt(p) for p in HELDOUT_IDENTITY_PROMPTS}
    assert len(held_out) == len(HELDOUT_IDENTITY_PROMPTS)
    trained = {normalize_prompt(p) for p in identity_prompts()}
    assert not held_out & trained
    generated = synthetic_conversations(seed=0)
    openings = {normalize_prompt(c["messages"][0]["content"]) for group in generated.values() for c in group}
    assert openings <= trained | {
        normalize_prompt(c["messages"][0]["content"]) for c in generated["tool_use"] + generated["small_talk"]
    }
    assert not held_out & openings


def test_held_out_other_prompts_are_neither_identity_questions_nor_trained_on():
    assert len(HELDOUT_OTHER_PROMPTS) >= 20
    others = {normalize_prompt(p) for p in HELDOUT_OTHER_PROMPTS}
    assert len(others) == len(HELDOUT_OTHER_PROMPTS)
    identity = {normalize_prompt(p) for p in (*identity_prompts(), *HELDOUT_IDENTITY_PROMPTS)}
    assert not others & identity
    assert not any(NAME in p.casefold() for p in HELDOUT_OTHER_PROMPTS)
    generated = synthetic_conversations(seed=0)
    openings = {normalize_prompt(c["messages"][0]["content"]) for group in generated.values() for c in group}
    assert not others & openings


def test_small_talk_is_varied_and_never_an_introduction():
    conversations = synthetic_conversations(seed=0)["small_talk"]
    prompts = {c["messages"][0]["content"] for c in conversations}
    assert len(prompts) >= 150  # many questions, not a few repeated
    assert not {normalize_prompt(p) for p in prompts} & {normalize_prompt(p) for p in identity_prompts()}
    for conversation in conversations:
        reply = conversation["messages"][1]["content"]
        assert isinstance(reply, str) and NAME not in reply.casefold() and "{" not in reply, reply
    replies = {c["messages"][1]["content"] for c in conversations}
    assert "The capital of Spain is Madrid." in replies and any(r.startswith("I like ") for r in replies)


def test_tool_use_calls_the_calculator_and_states_the_result():
    conversations = synthetic_conversations(seed=0)["tool_use"]
    lengths = set()
    for conversation in conversations:
        python, output, text = conversation["messages"][1]["content"]
        assert (python["type"], output["type"], text["type"]) == ("python", "python_output", "text")
        a, op, b = re.fullmatch(r"(\d{1,3})([-+*])(\d{1,3})", python["text"]).groups()
        assert output["text"] == evaluate(python["text"]) == str(OPERATORS[op](int(a), int(b)))
        assert text["text"] == f"{python['text']} = {output['text']}"
        assert a in conversation["messages"][0]["content"] and b in conversation["messages"][0]["content"]
        lengths |= {len(a), len(b)}
    assert lengths == {1, 2, 3}
    prompts = [c["messages"][0]["content"] for c in conversations]
    assert any(p.startswith("What is ") and re.fullmatch(r"What is \d+[-+*]\d+\?", p) for p in prompts)
    assert any(" plus " in p for p in prompts) and any(p.startswith("Compute ") for p in prompts)


def test_held_out_arithmetic_is_not_trained_on():
    tasks = heldout_arithmetic()
    assert [len(t) for t in tasks.values()] == [50, 50]
    two_to_three = tasks["arithmetic, 2-3 digit operands (calculator tool)"]
    for task in two_to_three:
        assert re.fullmatch(r"What is \d{2,3}[-+*]\d{2,3}\?", task.prompt), task.prompt
    held_out = {task.prompt.removeprefix("What is ").removesuffix("?") for t in tasks.values() for task in t}
    trained = {c["messages"][1]["content"][0]["text"] for c in synthetic_conversations(seed=0)["tool_use"]}
    assert not held_out & trained
