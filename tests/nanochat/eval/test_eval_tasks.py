"""Task loaders on small files in the public formats (JSONL and Parquet), their errors, answer extraction,
the arithmetic task and the offline download error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.calculator import evaluate
from nanochat.eval import EvalError
from nanochat.eval.tasks import (
    EXACT_MATCH,
    MULTIPLE_CHOICE,
    Task,
    TaskDownloadError,
    TaskFileError,
    arithmetic_task,
    download_task,
    extract_answer,
    load_arc,
    load_gsm8k,
    load_mmlu,
    load_task,
    normalize_answer,
)

REPO_ROOT = Path(__file__).resolve().parents[3]

ARC_ROWS = [
    {
        "id": "Mercury_7175875",
        "question": "An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?",
        "choices": {
            "text": [
                "Planetary density will decrease.",
                "Planetary years will become longer.",
                "Planetary days will become shorter.",
                "Planetary gravity will become stronger.",
            ],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "C",
    },
    {
        "id": "MCAS_2000_4_6",
        "question": "Which technology was developed most recently?",
        "choices": {"text": ["cellular telephone", "television", "refrigerator"], "label": ["1", "2", "3"]},
        "answerKey": "1",
    },
]
MMLU_ROWS = [
    {
        "question": "Find the degree for the given field extension Q(sqrt(2)) over Q.",
        "subject": "abstract_algebra",
        "choices": ["0", "2", "1", "3"],
        "answer": 1,
    },
    {"question": "What is 2+2?", "subject": "elementary_mathematics", "choices": ["3", "4"], "answer": 1},
]
GSM8K_ROWS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
        "clips altogether in April and May.\n#### 72",
    },
    {"question": "How much is a thousand and a half?", "answer": "1000 + 500 = 1500\n#### 1,500"},
]


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    """One JSON object per line; raw_lines replaces line numbers (1-based) with raw text."""
    lines = [json.dumps(row) for row in rows]
    for number, text in (raw_lines or {}).items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parquet(path: Path, rows: list) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(params=["jsonl", "parquet"])
def write_rows(request, tmp_path):
    def write(rows: list, name: str = "rows") -> Path:
        path = tmp_path / f"{name}.{request.param}"
        return write_jsonl(path, rows) if request.param == "jsonl" else write_parquet(path, rows)

    return write


# ---- loaders ------------------------------------------------------------------------------------------
def test_arc_rows_become_multiple_choice_in_nanochat_format(write_rows):
    tasks = load_arc(write_rows(ARC_ROWS))
    assert [t.kind for t in tasks] == [MULTIPLE_CHOICE] * 2
    first, second = tasks
    assert first.letters == ("A", "B", "C", "D") and first.answer == "C"
    assert first.choices == tuple(ARC_ROWS[0]["choices"]["text"])
    assert first.prompt == (
        f"Multiple Choice question: {ARC_ROWS[0]['question']}\n"
        "- Planetary density will decrease.=A\n"
        "- Planetary years will become longer.=B\n"
        "- Planetary days will become shorter.=C\n"
        "- Planetary gravity will become stronger.=D\n"
        "\nRespond only with the letter of the correct answer."
    )
    assert first.conversation()["messages"][1] == {"role": "assistant", "content": "C"}
    assert second.letters == ("1", "2", "3") and second.answer == "1"
    assert second.chance == pytest.approx(1 / 3)
    assert re.search(r"rows\.(jsonl:1|parquet: row 1)$", first.source)


def test_mmlu_rows_are_lettered_from_a(write_rows):
    tasks = load_mmlu(write_rows(MMLU_ROWS))
    assert [(t.letters, t.answer) for t in tasks] == [(("A", "B", "C", "D"), "B"), (("A", "B"), "B")]
    assert "- 2=B\n" in tasks[0].prompt and tasks[0].prompt.startswith("Multiple Choice question: Find")
    assert tasks[1].chance == 0.5


def test_gsm8k_rows_are_exact_match_on_the_number_after_the_marker(write_rows):
    tasks = load_gsm8k(write_rows(GSM8K_ROWS))
    assert [(t.kind, t.answer) for t in tasks] == [(EXACT_MATCH, "72"), (EXACT_MATCH, "1500")]
    assert tasks[0].prompt == GSM8K_ROWS[0]["question"]
    assert tasks[0].chance == 0.0
    # the calculator annotations become tool calls in the reference reply
    parts = tasks[0].reference
    assert parts[:3] == [
        {"type": "text", "text": "Natalia sold 48/2 = "},
        {"type": "python", "text": "48/2"},
        {"type": "python_output", "text": "24"},
    ]
    assert parts[-1] == {"type": "text", "text": "72 clips altogether in April and May.\n#### 72"}
    assert "".join(p["text"] for p in parts if p["type"] == "text").endswith("#### 72")


def test_load_task_picks_the_loader_by_name_prefix(tmp_path):
    arc = write_jsonl(tmp_path / "arc.jsonl", ARC_ROWS)
    assert load_task("arc-easy", arc) == load_task("arc", arc) == load_arc(arc)
    assert load_task("MMLU_dev", write_jsonl(tmp_path / "m.jsonl", MMLU_ROWS))[0].answer == "B"
    with pytest.raises(EvalError, match=r"unknown task 'trivia'.*arc"):
        load_task("trivia", arc)


@pytest.mark.parametrize(
    ("loader", "rows", "message"),
    [
        (
            load_arc,
            [ARC_ROWS[0], {**ARC_ROWS[0], "answerKey": "E"}],
            "answerKey 'E' is not one of the labels",
        ),
        (load_arc, [ARC_ROWS[0], {**ARC_ROWS[0], "question": ""}], '"question" must be a non-empty string'),
        (
            load_arc,
            [ARC_ROWS[0], {**ARC_ROWS[0], "choices": {"text": ["a", "b"], "label": ["A"]}}],
            "2 choice texts but 1 labels",
        ),
        (load_arc, [ARC_ROWS[0], {"question": "q", "answerKey": "A"}], '"choices" must be an object'),
        (
            load_mmlu,
            [MMLU_ROWS[0], {**MMLU_ROWS[0], "answer": 4}],
            "index of the right choice .0 to 3., got 4",
        ),
        (load_mmlu, [MMLU_ROWS[0], {**MMLU_ROWS[0], "answer": None}], "got None"),
        (load_mmlu, [MMLU_ROWS[0], {**MMLU_ROWS[0], "choices": ["only"]}], "expected 2 to 26 choices"),
        (load_gsm8k, [GSM8K_ROWS[0], {"question": "q", "answer": "42"}], 'must end with "#### <number>"'),
        (load_gsm8k, [GSM8K_ROWS[0], {"question": "q", "answer": "#### many"}], "expected a number"),
        (load_gsm8k, [GSM8K_ROWS[0], {"answer": "#### 1"}], '"question" must be a non-empty string .missing'),
    ],
)
def test_malformed_rows_name_the_file_and_line(tmp_path, loader, rows, message):
    jsonl = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TaskFileError, match=rf"bad\.jsonl:2: .*{message}"):
        loader(jsonl)
    parquet = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(TaskFileError, match=rf"bad\.parquet: row 2: .*{message}"):
        loader(parquet)


def test_unreadable_files_say_why(tmp_path):
    broken = write_jsonl(tmp_path / "broken.jsonl", [ARC_ROWS[0]] * 3, raw_lines={3: '{"question": "q",'})
    with pytest.raises(TaskFileError, match=r"broken\.jsonl:3: not valid JSON"):
        load_arc(broken)
    array = write_jsonl(tmp_path / "array.jsonl", [ARC_ROWS[0]], raw_lines={1: "[1, 2]"})
    with pytest.raises(TaskFileError, match=r"array\.jsonl:1: each line must be a JSON object, got list"):
        load_arc(array)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(TaskFileError, match="no rows"):
        load_arc(tmp_path / "empty.jsonl")
    (tmp_path / "rows.csv").write_text("question,answer\n")
    with pytest.raises(TaskFileError, match=r"unsupported file type '\.csv'; use \.jsonl or \.parquet"):
        load_mmlu(tmp_path / "rows.csv")
    with pytest.raises(TaskFileError, match="task file not found"):
        load_gsm8k(tmp_path / "missing.jsonl")
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(TaskFileError, match=r"fake\.parquet: not a readable Parquet file"):
        load_gsm8k(tmp_path / "fake.parquet")


def test_a_letter_answer_in_mmlu_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "letters.jsonl", [{**MMLU_ROWS[0], "answer": "B"}])
    with pytest.raises(TaskFileError, match=r"letters\.jsonl:1: .*index of the right choice .*got 'B'"):
        load_mmlu(path)


def test_line_numbers_count_blank_lines_and_only_newlines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    # U+2028 inside a JSON string is valid JSON and not a line break in JSON Lines
    first = json.dumps({**MMLU_ROWS[0], "question": "line\u2028separator"}, ensure_ascii=False)
    path.write_text(first + "\n\n" + json.dumps({**MMLU_ROWS[0], "answer": -1}) + "\n")
    with pytest.raises(TaskFileError, match=r"gaps\.jsonl:3: "):
        load_mmlu(path)
    path.write_text(first + "\r\n")
    assert "line\u2028separator" in load_mmlu(path)[0].prompt


def test_a_task_checks_its_own_consistency():
    with pytest.raises(EvalError, match="answer 'E' is not one of the letters"):
        Task(MULTIPLE_CHOICE, "q", "E", ("A", "B"), ("x", "y"))
    with pytest.raises(EvalError, match="one letter per choice"):
        Task(MULTIPLE_CHOICE, "q", "A", ("A", "B"), ("x",))
    with pytest.raises(EvalError, match="must be distinct"):
        Task(MULTIPLE_CHOICE, "q", "A", ("A", "A"), ("x", "y"))
    with pytest.raises(EvalError, match="task kind must be one of"):
        Task("free_text", "q", "a")


# ---- answers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", "1234"),
        ("+7", "7"),
        ("4.0", "4"),
        ("12.50", "12.5"),
        ("-0", "0"),
        ("007", "7"),
        ("-3", "-3"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The answer is 444.", "444"),
        ("37*12\n444\n37*12 = 444", "444"),
        ("First 3 boxes, then 5.\n#### 1,200 dollars, not 7", "1200"),
        ("#### 5\nmore text 9\n#### 12", "12"),
        ("#### none here, but 8 earlier", "8"),  # nothing numeric after #### at all: last number
        ("She has -4.50 left", "-4.5"),
        ("no numbers", None),
        ("", None),
    ],
)
def test_extract_answer(reply, expected):
    assert extract_answer(reply) == expected


# ---- arithmetic ---------------------------------------------------------------------------------------
def test_arithmetic_answers_are_the_right_results_and_what_the_calculator_prints():
    tasks = arithmetic_task(60, seed=3, max_value=50)
    ops = set()
    for task in tasks:
        match = re.fullmatch(r"What is (\d+)([-+*])(\d+)\?", task.prompt)
        assert match, task.prompt
        a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
        assert 1 <= a <= 50 and 1 <= b <= 50
        ops.add(op)
        assert task.answer == str({"+": a + b, "-": a - b, "*": a * b}[op])
        assert task.kind == EXACT_MATCH
        assert task.reference[0] == {"type": "python", "text": f"{a}{op}{b}"}
        assert task.reference[1] == {"type": "python_output", "text": evaluate(f"{a}{op}{b}")}
        assert extract_answer(task.reference[2]["text"]) == task.answer
    assert ops == {"+", "-", "*"}
    assert arithmetic_task(60, seed=3, max_value=50) == tasks
    assert arithmetic_task(60, seed=4, max_value=50) != tasks
    assert arithmetic_task(0) == []
    with pytest.raises(EvalError, match="int >= 0"):
        arithmetic_task(-1)
    with pytest.raises(EvalError, match="max_value"):
        arithmetic_task(3, max_value=0)


def test_arithmetic_operands_can_have_a_lower_bound():
    assert arithmetic_task(20, seed=5, max_value=100, min_value=1) == arithmetic_task(20, seed=5)
    for task in arithmetic_task(200, seed=5, min_value=10, max_value=999):
        a, b = re.fullmatch(r"What is (\d+)[-+*](\d+)\?", task.prompt).groups()
        assert 10 <= int(a) <= 999 and 10 <= int(b) <= 999
    with pytest.raises(EvalError, match="min_value must be an int >= 1"):
        arithmetic_task(3, min_value=0)
    with pytest.raises(EvalError, match="min_value 50 is above max_value 20"):
        arithmetic_task(3, min_value=50, max_value=20)


# ---- download -----------------------------------------------------------------------------------------
def test_download_fails_clearly_offline(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty cache: a TaskDownloadError that says what to do, not a traceback."""
    script = (
        "from nanochat.eval.tasks import download_task, TaskDownloadError\n"
        "try:\n"
        f"    download_task('gsm8k', 'test', {str(tmp_path / 'out')!r})\n"
        "except TaskDownloadError as e:\n"
        "    print('ERROR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_CACHE"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "ERROR cannot download main/test-00000-of-00001.parquet of the dataset openai/gsm8k"
    )
    assert "--task NAME=PATH" in done.stdout


def test_download_rejects_unknown_names_and_splits(tmp_path):
    with pytest.raises(TaskDownloadError, match="unknown task 'hellaswag'"):
        download_task("hellaswag", "test", tmp_path)
    with pytest.raises(
        TaskDownloadError, match=r"gsm8k has no split 'validation'; its splits are \['train', 'test'\]"
    ):
        download_task("gsm8k", "validation", tmp_path)
