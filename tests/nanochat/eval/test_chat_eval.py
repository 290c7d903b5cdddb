"""The chat harness: multiple choice against hand-computed letter logits and a programmed model, exact match
through the engine and the calculator, assistant_end_rate's rules, sampling and the results table."""

from __future__ import annotations

import pytest
import torch

from nanochat.checkpoint import load_checkpoint
from nanochat.eval.chat_eval import (
    ChatEvalError,
    assistant_end_rate,
    generate_replies,
    mention_rate,
    predict_multiple_choice,
    reply_text,
    results_table,
    run_chat_eval,
    sample_completions,
)
from nanochat.eval.tasks import EXACT_MATCH, MULTIPLE_CHOICE, Task, arithmetic_task, render_multiple_choice

QUESTIONS = [
    ("Which license lets you share and change the code?", ("GPL", "none", "EULA", "NDA"), "A"),
    ("What does a fox do over the lazy dog?", ("sleeps", "jumps", "swims", "reads"), "B"),
    ("Pick the colour of the quick fox.", ("blue", "green", "brown", "white"), "C"),
    ("Which is a token?", ("model", "the", "a word piece", "freedom"), "C"),
    ("Two choices only: is this a test?", ("yes", "no"), "A"),
]


def mc_tasks() -> list[Task]:
    tasks = []
    for question, choices, answer in QUESTIONS:
        letters = tuple("ABCD"[: len(choices)])
        prompt = render_multiple_choice(question, letters, choices)
        tasks.append(Task(MULTIPLE_CHOICE, prompt, answer, letters, choices))
    return tasks


def letters_by_hand(model, tokenizer, tasks) -> list[str]:
    """The definition: one forward per example, argmax of the last position's logits over the letters."""
    picks = []
    for task in tasks:
        ids = tokenizer.render_for_completion(task.conversation())
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, -1]
        letter_ids = [tokenizer.encode(letter)[0] for letter in task.letters]
        picks.append(task.letters[int(torch.argmax(logits[letter_ids]))])
    return picks


# ---- multiple choice ----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_multiple_choice_matches_letter_logits_by_hand(make_model, small_tokenizer, batch_size):
    model = make_model(seed=5)
    tasks = mc_tasks()
    expected = letters_by_hand(model, small_tokenizer, tasks)
    assert predict_multiple_choice(model, small_tokenizer, tasks, batch_size=batch_size) == expected


def test_multiple_choice_on_the_reference_checkpoint(reference_dir):
    loaded = load_checkpoint(reference_dir / "modelA")
    tasks = mc_tasks()
    picks = predict_multiple_choice(loaded.model, loaded.tokenizer, tasks, batch_size=4)
    assert picks == letters_by_hand(loaded.model, loaded.tokenizer, tasks)
    assert all(pick in task.letters for pick, task in zip(picks, tasks, strict=True))
    result = run_chat_eval(loaded.model, loaded.tokenizer, {"mc": tasks})["mc"]
    assert result["n"] == len(tasks) and 0.0 <= result["accuracy"] <= 1.0
    assert result["correct"] == sum(p == t.answer for p, t in zip(picks, tasks, strict=True))


def test_a_model_that_always_says_c_scores_the_share_of_c_answers(scripted, small_tokenizer):
    model = scripted(["<|assistant_start|>", "C"])
    tasks = mc_tasks()
    assert predict_multiple_choice(model, small_tokenizer, tasks) == ["C", "C", "C", "C", "A"]
    result = run_chat_eval(model, small_tokenizer, {"mc": tasks})["mc"]
    # answers A B C C A; predictions C C C C A (C is not a choice of the 2-choice question: A wins the tie)
    assert result == {
        "kind": MULTIPLE_CHOICE,
        "n": 5,
        "correct": 3,
        "accuracy": 0.6,
        "chance": pytest.approx((4 * 0.25 + 0.5) / 5),
    }


def test_multi_token_letters_are_refused(make_model, small_tokenizer):
    assert len(small_tokenizer.encode("café")) > 1
    task = Task(MULTIPLE_CHOICE, "q", "A", ("A", "café"), ("x", "y"), source="odd.jsonl:7")
    with pytest.raises(ChatEvalError, match=r"odd\.jsonl:7: choice letter 'café' is 3 tokens"):
        predict_multiple_choice(make_model(), small_tokenizer, [task])


# ---- exact match --------------------------------------------------------------------------------------
CALCULATOR_CHAIN = [
    "<|assistant_start|>",
    "<|python_start|>",
    "6",
    "*",
    "7",
    "<|python_end|>",
]


def test_exact_match_runs_the_calculator_and_reads_the_last_number(scripted, small_tokenizer):
    # the model always asks the calculator for 6*7 and, after the tool output, ends its reply
    model = scripted(CALCULATOR_CHAIN, ["<|output_end|>", "<|assistant_end|>"])
    tasks = [
        Task(EXACT_MATCH, "What is 6*7?", "42"),
        Task(EXACT_MATCH, "What is 5*5?", "25"),
        Task(EXACT_MATCH, "What is 40+2?", "42"),
    ]
    replies = generate_replies(model, small_tokenizer, tasks, max_tokens=20, batch_size=2)
    assert replies == ["6*7\n42"] * 3  # the tool output "42" is forced in by the engine
    result = run_chat_eval(model, small_tokenizer, {"math": tasks}, max_tokens=20)["math"]
    assert result == {"kind": EXACT_MATCH, "n": 3, "correct": 2, "accuracy": 2 / 3, "chance": 0.0}


def test_mention_rate_counts_replies_that_say_the_word(scripted, small_tokenizer):
    model = scripted(["<|assistant_start|>", "fox", "<|assistant_end|>"])  # every reply is "fox"
    rate, replies = mention_rate(model, small_tokenizer, ["who are you?", "hello"], "FOX", max_tokens=8)
    assert (rate, replies) == (1.0, ["fox", "fox"])  # case-insensitive
    assert mention_rate(model, small_tokenizer, ["who are you?"], "dog", max_tokens=8)[0] == 0.0
    with pytest.raises(ChatEvalError, match="at least one prompt"):
        mention_rate(model, small_tokenizer, [], "fox")


def test_exact_match_is_bounded_by_max_tokens(scripted, small_tokenizer):
    model = scripted(["<|assistant_start|>", "4", "2", "4"])  # "42424242..." never ends
    replies = generate_replies(model, small_tokenizer, [Task(EXACT_MATCH, "q", "42")], max_tokens=5)
    assert replies == ["42424"]


def test_reply_text_separates_segments_at_special_tokens(small_tokenizer):
    special = small_tokenizer.get_special_tokens()
    tokens = [
        special["<|python_start|>"],
        *small_tokenizer.encode("37*12"),
        special["<|python_end|>"],
        special["<|output_start|>"],
        *small_tokenizer.encode("444"),
        special["<|output_end|>"],
        *small_tokenizer.encode("done"),
        special["<|assistant_end|>"],
    ]
    assert reply_text(small_tokenizer, tokens) == "37*12\n444\ndone"


def test_arithmetic_task_runs_end_to_end_on_a_random_model(make_model, small_tokenizer):
    tasks = arithmetic_task(4, seed=1)
    result = run_chat_eval(make_model(), small_tokenizer, {"arithmetic": tasks}, max_tokens=6)["arithmetic"]
    assert result["n"] == 4 and 0.0 <= result["accuracy"] <= 1.0 and result["chance"] == 0.0


# ---- run_chat_eval and the table ----------------------------------------------------------------------
def test_max_examples_and_the_table(scripted, small_tokenizer):
    model = scripted(["<|assistant_start|>", "C"], ["C", "<|assistant_end|>"])
    tasks = {"mc": mc_tasks(), "arith": arithmetic_task(5, seed=0)}
    results = run_chat_eval(model, small_tokenizer, tasks, max_examples=3, max_tokens=4)
    assert [r["n"] for r in results.values()] == [3, 3]
    assert results["mc"]["correct"] == 1 and results["arith"]["correct"] == 0
    table = results_table(results)
    assert table.splitlines() == [
        "| task | kind | n | accuracy | chance |",
        "|---|---|---:|---:|---:|",
        "| mc | multiple_choice | 3 | 0.3333 | 0.2500 |",
        "| arith | exact_match | 3 | 0.0000 | 0.0000 |",
    ]
    with pytest.raises(ChatEvalError, match="task 'empty' has no examples"):
        run_chat_eval(model, small_tokenizer, {"empty": []})


# ---- assistant_end_rate -------------------------------------------------------------------------------
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]},
    {
        "messages": [
            {"role": "user", "content": "the quick fox"},
            {"role": "assistant", "content": "jumps"},
            {"role": "user", "content": "over?"},
            {"role": "assistant", "content": "the lazy dog"},
        ]
    },
]


@pytest.mark.parametrize(
    ("chains", "rate"),
    [
        ([["<|assistant_start|>", "x", "y", "<|assistant_end|>"]], 1.0),
        ([["<|assistant_start|>", "<|assistant_end|>"]], 0.0),  # nothing said
        ([["<|assistant_start|>", " ", "<|assistant_end|>"]], 0.0),  # only whitespace
        ([["<|assistant_start|>", "x", "x"]], 0.0),  # never ends
        ([["<|assistant_start|>", "x", "<|bos|>"]], 0.0),  # ends with a new document instead
        ([["<|assistant_start|>", "<|python_start|>", "x", "<|python_end|>", "<|assistant_end|>"]], 0.0),
        ([["<|assistant_start|>", "<|python_start|>", "x", "<|python_end|>", "y", "<|assistant_end|>"]], 1.0),
    ],
)
def test_assistant_end_rate_counts_only_text_then_assistant_end(scripted, small_tokenizer, chains, rate):
    model = scripted(*chains)
    assert assistant_end_rate(model, small_tokenizer, CONVERSATIONS, max_tokens=16) == rate


def test_assistant_end_rate_needs_the_end_within_max_tokens(scripted, small_tokenizer):
    model = scripted(["<|assistant_start|>", "a", "b", "c", "d", "<|assistant_end|>"])
    assert assistant_end_rate(model, small_tokenizer, CONVERSATIONS, max_tokens=5) == 1.0
    assert assistant_end_rate(model, small_tokenizer, CONVERSATIONS, max_tokens=4) == 0.0


def test_assistant_end_rate_wants_conversations_ending_with_the_assistant(make_model, small_tokenizer):
    open_ended = {"messages": [{"role": "user", "content": "hello"}]}
    with pytest.raises(ChatEvalError, match="conversation 1: message 0 has role 'user'"):
        assistant_end_rate(make_model(), small_tokenizer, [CONVERSATIONS[0], open_ended])
    with pytest.raises(ChatEvalError, match="at least one conversation"):
        assistant_end_rate(make_model(), small_tokenizer, [])


# ---- sampling -----------------------------------------------------------------------------------------
def test_sample_completions_follow_the_model(scripted, small_tokenizer):
    model = scripted(["q", "r", "s", "<|bos|>"])
    assert sample_completions(model, small_tokenizer, ["pq", "xq"], max_tokens=10) == ["rs", "rs"]


def test_sampled_completions_do_not_depend_on_the_other_prompts(make_model, small_tokenizer):
    model = make_model(seed=2)
    prompts = ["the quick brown", "lazy dog"]
    both = sample_completions(model, small_tokenizer, prompts, max_tokens=8, temperature=1.0, seed=7)
    assert both == sample_completions(model, small_tokenizer, prompts, max_tokens=8, temperature=1.0, seed=7)
    alone = sample_completions(model, small_tokenizer, prompts[1:], max_tokens=8, temperature=1.0, seed=8)
    assert both[1] == alone[0]
    other_seed = sample_completions(model, small_tokenizer, prompts, max_tokens=8, temperature=1.0, seed=99)
    assert other_seed != both
