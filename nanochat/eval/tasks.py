"""Chat evaluation tasks: ARC, MMLU and GSM8K from local files in their public formats, a synthetic
arithmetic task, and the download of the public files from the Hugging Face hub.

Each loader turns a file into a list of `Task` examples:
- ARC (allenai/ai2_arc rows): {"id", "question", "choices": {"text": [...], "label": [...]}, "answerKey"}.
- MMLU (cais/mmlu rows): {"question", "subject", "choices": [...], "answer": index}.
- GSM8K (openai/gsm8k rows): {"question", "answer"}, the answer a worked solution ending in "#### 42".
Files are JSON Lines (`.jsonl`, one row per line) or Parquet (`.parquet`, as the hub serves them). A
malformed row raises `TaskFileError` naming the file and line (JSONL) or row (Parquet).

Multiple-choice questions are rendered in nanochat's format (each choice followed by "=LETTER", no space
before the letter), which its chat models are fine-tuned on; the expected reply is the bare letter.

It does not run models (see `chat_eval`) and reads nothing from the network except in `download_task`.
"""

from __future__ import annotations

import json
import operator
import os
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanochat.calculator import evaluate as calculator_evaluate
from nanochat.eval import EvalError

MULTIPLE_CHOICE = "multiple_choice"
EXACT_MATCH = "exact_match"
KINDS = (MULTIPLE_CHOICE, EXACT_MATCH)

# The public files on the Hugging Face hub (dataset repos): name -> (repo id, path template, splits).
HUB_FILES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "arc-easy": (
        "allenai/ai2_arc",
        "ARC-Easy/{split}-00000-of-00001.parquet",
        ("train", "validation", "test"),
    ),
    "arc-challenge": (
        "allenai/ai2_arc",
        "ARC-Challenge/{split}-00000-of-00001.parquet",
        ("train", "validation", "test"),
    ),
    "mmlu": (
        "cais/mmlu",
        "all/{split}-00000-of-00001.parquet",
        ("auxiliary_train", "dev", "validation", "test"),
    ),
    "gsm8k": ("openai/gsm8k", "main/{split}-00000-of-00001.parquet", ("train", "test")),
}
GSM8K_MARKER = "####"
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_GSM8K_CALL = re.compile(r"<<([^<>=]*)=([^<>]*)>>")  # calculator annotations "<<48/2=24>>" in solutions
_ARITHMETIC_OPS: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}


class TaskFileError(EvalError):
    """A task file that cannot be read, or a row in it that is not in the expected format."""


class TaskDownloadError(EvalError):
    """A task file that cannot be downloaded (offline, unknown name or split, hub error)."""


@dataclass(frozen=True)
class Task:
    """One example: a user prompt and the answer the assistant should give.

    multiple_choice: `letters` label `choices`, `answer` is the right letter and the prompt already lists
    the choices. exact_match: `answer` is the normalised final answer (see `normalize_answer`).
    `reference` is a full assistant reply (a str or nanochat message parts) for training on the task; it
    defaults to the bare answer. `source` says where the example came from ("file:line").
    """

    kind: str
    prompt: str
    answer: str
    letters: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    reference: str | list[dict[str, str]] | None = field(default=None, compare=False)
    source: str = ""

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        if self.kind not in KINDS:
            raise EvalError(f"{where}task kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind == MULTIPLE_CHOICE:
            if len(self.letters) < 2 or len(self.letters) != len(self.choices):
                raise EvalError(
                    f"{where}a multiple-choice example needs >= 2 choices and one letter per choice, got "
                    f"{len(self.choices)} choices and {len(self.letters)} letters"
                )
            if len(set(self.letters)) != len(self.letters):
                raise EvalError(f"{where}choice letters must be distinct, got {list(self.letters)}")
            if self.answer not in self.letters:
                raise EvalError(
                    f"{where}answer {self.answer!r} is not one of the letters {list(self.letters)}"
                )

    @property
    def chance(self) -> float:
        """Accuracy of guessing: 1 / number of choices, 0 for exact match."""
        return 1.0 / len(self.letters) if self.kind == MULTIPLE_CHOICE else 0.0

    def conversation(self) -> dict[str, Any]:
        """The example as a nanochat conversation: the user prompt and the reference reply."""
        reply = self.reference if self.reference is not None else self.answer
        return {
            "messages": [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": reply}]
        }


def render_multiple_choice(question: str, letters: tuple[str, ...], choices: tuple[str, ...]) -> str:
    """nanochat's multiple-choice user message: each choice followed by "=LETTER" (no space: the reply is
    the bare letter and " A" is another token than "A")."""
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices, strict=True)]
    return "\n".join(lines) + "\n\nRespond only with the letter of the correct answer."


def normalize_answer(text: str) -> str:
    """A number as one canonical string: no thousands commas, no leading '+', no trailing decimal zeros
    ("1,234.50" -> "1234.5", "+7" -> "7", "4.0" -> "4", "-0" -> "0"); other text is only stripped."""
    text = text.strip()
    number = text.replace(",", "").removeprefix("+")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", number):
        return text
    negative = number.startswith("-")
    whole, _, fraction = number.removeprefix("-").partition(".")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    result = f"{whole}.{fraction}" if fraction else whole
    return "-" + result if negative and result != "0" else result


def extract_answer(reply: str) -> str | None:
    """The final answer in a model's reply: the number after the last "####" if there is one (GSM8K
    style), else the last number in the reply; normalised. None when the reply has no number."""
    if GSM8K_MARKER in reply:
        match = _NUMBER.search(reply.rsplit(GSM8K_MARKER, 1)[1])
        if match:
            return normalize_answer(match.group())
    numbers = _NUMBER.findall(reply)
    return normalize_answer(numbers[-1]) if numbers else None


# ---- loaders ------------------------------------------------------------------------------------------
def load_arc(path: str | os.PathLike[str]) -> list[Task]:
    """ARC rows -> multiple-choice examples; the letters are the row's labels ("A".., or "1".. in a few)."""
    tasks = []
    for where, row in read_rows(path):
        question = _text_field(row, "question", where)
        choices = row.get("choices")
        if not isinstance(choices, dict):
            raise TaskFileError(f'{where}: "choices" must be an object {{"text": [...], "label": [...]}}')
        texts = _str_list(choices, "text", where, "choices.text")
        labels = _str_list(choices, "label", where, "choices.label")
        if len(texts) != len(labels):
            raise TaskFileError(f"{where}: {len(texts)} choice texts but {len(labels)} labels")
        answer = _text_field(row, "answerKey", where)
        if answer not in labels:
            raise TaskFileError(f"{where}: answerKey {answer!r} is not one of the labels {labels}")
        tasks.append(_multiple_choice(question, tuple(labels), tuple(texts), answer, where))
    return tasks


def load_mmlu(path: str | os.PathLike[str]) -> list[Task]:
    """MMLU rows -> multiple-choice examples lettered A, B, C, ..."""
    tasks = []
    for where, row in read_rows(path):
        question = _text_field(row, "question", where)
        choices = _str_list(row, "choices", where, "choices")
        if not 2 <= len(choices) <= 26:
            raise TaskFileError(f"{where}: expected 2 to 26 choices, got {len(choices)}")
        letters = tuple(chr(ord("A") + i) for i in range(len(choices)))
        answer = row.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise TaskFileError(
                f'{where}: "answer" must be the index of the right choice (0 to {len(choices) - 1}), '
                f"got {answer!r}"
            )
        tasks.append(_multiple_choice(question, letters, tuple(choices), letters[answer], where))
    return tasks


def load_gsm8k(path: str | os.PathLike[str]) -> list[Task]:
    """GSM8K rows -> exact-match examples; the answer is the number after "####" in the solution."""
    tasks = []
    for where, row in read_rows(path):
        question = _text_field(row, "question", where)
        solution = _text_field(row, "answer", where)
        if GSM8K_MARKER not in solution:
            raise TaskFileError(f'{where}: "answer" must end with "{GSM8K_MARKER} <number>", as GSM8K does')
        final = solution.rsplit(GSM8K_MARKER, 1)[1].strip()
        if not _NUMBER.fullmatch(final.removeprefix("+")):
            raise TaskFileError(f'{where}: expected a number after "{GSM8K_MARKER}", got {final!r}')
        reference = _gsm8k_parts(solution)
        tasks.append(Task(EXACT_MATCH, question, normalize_answer(final), reference=reference, source=where))
    return tasks


LOADERS: dict[str, Callable[[str | os.PathLike[str]], list[Task]]] = {
    "arc": load_arc,
    "mmlu": load_mmlu,
    "gsm8k": load_gsm8k,
}


def load_task(name: str, path: str | os.PathLike[str]) -> list[Task]:
    """Load `path` with the loader its task name starts with: "arc", "arc-easy", "mmlu", "gsm8k", ..."""
    family = re.split(r"[-_.]", name.lower(), maxsplit=1)[0]
    if family not in LOADERS:
        raise EvalError(
            f"unknown task {name!r}: the name must start with one of {sorted(LOADERS)} (e.g. arc-easy)"
        )
    return LOADERS[family](path)


def read_rows(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) for each row of a .jsonl or .parquet file; location is "file:line" or "file: row N"."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"task file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix == ".parquet":
        yield from _parquet_rows(path)
    else:
        raise TaskFileError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .jsonl or .parquet")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        # split on "\n" only: JSON strings may hold U+2028 and friends, which splitlines() would split on
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise TaskFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise TaskFileError(f"cannot read {path}: {e.strerror}") from e
    any_rows = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskFileError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(row, dict):
            raise TaskFileError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
        any_rows = True
        yield where, row
    if not any_rows:
        raise TaskFileError(f"{path}: no rows (the file is empty)")


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise TaskFileError(f"{path}: not a readable Parquet file ({e})") from e
    if not rows:
        raise TaskFileError(f"{path}: no rows (the file is empty)")
    for number, row in enumerate(rows, start=1):
        yield f"{path}: row {number}", row


def _text_field(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        found = "missing" if value is None else f"got {value!r}"[:80]
        raise TaskFileError(f'{where}: "{key}" must be a non-empty string ({found})')
    return value


def _str_list(row: dict[str, Any], key: str, where: str, name: str) -> list[str]:
    value = row.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        found = "missing" if value is None else f"got {value!r}"[:80]
        raise TaskFileError(f'{where}: "{name}" must be a non-empty list of strings ({found})')
    return value


def _multiple_choice(
    question: str, letters: tuple[str, ...], choices: tuple[str, ...], answer: str, where: str
) -> Task:
    try:
        prompt = render_multiple_choice(question, letters, choices)
        return Task(MULTIPLE_CHOICE, prompt, answer, letters, choices, source=where)
    except EvalError as e:
        raise TaskFileError(str(e)) from e


def _gsm8k_parts(solution: str) -> list[dict[str, str]]:
    """A GSM8K solution as assistant parts: its "<<expr=result>>" annotations become calculator calls."""
    parts: list[dict[str, str]] = []
    position = 0
    for match in _GSM8K_CALL.finditer(solution):
        if match.start() > position:
            parts.append({"type": "text", "text": solution[position : match.start()]})
        parts.append({"type": "python", "text": match.group(1)})
        parts.append({"type": "python_output", "text": match.group(2)})
        position = match.end()
    if position < len(solution):
        parts.append({"type": "text", "text": solution[position:]})
    return parts


# ---- synthetic ----------------------------------------------------------------------------------------
def arithmetic_task(n: int, seed: int = 0, max_value: int = 100, min_value: int = 1) -> list[Task]:
    """`n` exact-match questions like "What is 37*12?" (answer "444") with operands in [min_value,
    max_value] and +, - or *. The reference reply calls the calculator, so a model that learnt to use it
    can score."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise EvalError(f"the number of arithmetic examples must be an int >= 0, got {n!r}")
    for name, value in (("min_value", min_value), ("max_value", max_value)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EvalError(f"{name} must be an int >= 1, got {value!r}")
    if min_value > max_value:
        raise EvalError(f"min_value {min_value} is above max_value {max_value}")
    rng = random.Random(seed)
    tasks = []
    for index in range(n):
        a, b = rng.randint(min_value, max_value), rng.randint(min_value, max_value)
        op = rng.choice(sorted(_ARITHMETIC_OPS))
        expression = f"{a}{op}{b}"
        answer = str(_ARITHMETIC_OPS[op](a, b))
        output = calculator_evaluate(expression)
        reference = [
            {"type": "python", "text": expression},
            {"type": "python_output", "text": output if output is not None else answer},
            {"type": "text", "text": f"{expression} = {answer}"},
        ]
        prompt = f"What is {expression}?"
        tasks.append(Task(EXACT_MATCH, prompt, answer, reference=reference, source=f"arithmetic[{index}]"))
    return tasks


# ---- download -----------------------------------------------------------------------------------------
def download_task(
    name: str, split: str, out_dir: str | os.PathLike[str], revision: str | None = None
) -> Path:
    """Download one public task file from the Hugging Face hub into `out_dir`; returns its path.

    `name` is a key of HUB_FILES (arc-easy, arc-challenge, mmlu, gsm8k). The file keeps its hub path under
    `out_dir` (e.g. out_dir/main/test-00000-of-00001.parquet) and loads with `load_task(name, path)`.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if name not in HUB_FILES:
        raise TaskDownloadError(f"unknown task {name!r} to download; known: {sorted(HUB_FILES)}")
    repo_id, template, splits = HUB_FILES[name]
    if split not in splits:
        raise TaskDownloadError(f"{name} has no split {split!r}; its splits are {list(splits)}")
    filename = template.format(split=split)
    where = f"{filename} of the dataset {repo_id}"
    try:
        path = hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision, local_dir=out_dir)
    except LocalEntryNotFoundError as e:
        raise TaskDownloadError(
            f"cannot download {where}: the Hugging Face hub is not reachable (offline, or HF_HUB_OFFLINE "
            "is set) and the file is not in the local cache; download it where the hub is reachable "
            "and pass the file with --task NAME=PATH"
        ) from e
    except (RepositoryNotFoundError, EntryNotFoundError) as e:
        raise TaskDownloadError(f"{where} was not found on the hub: {e}") from e
    except (HfHubHTTPError, OSError) as e:
        raise TaskDownloadError(f"could not download {where}: {e}") from e
    return Path(path)
