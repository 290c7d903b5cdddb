"""docs/serving.md "OpenAI compatibility, field by field" agrees with app/schemas.py.

The "this server" column of both tables is parsed and checked against the request models: a field marked
`yes` is a declared field that is not in IGNORED_FIELDS; `ignored` is declared and in IGNORED_FIELDS (and
setting it leaves the engine's parameters unchanged); `no (400)` is refused, either by validation (an
undeclared field: `extra_forbidden`, which the API answers with a 400 `unsupported_parameter`) or by
`unsupported_parameter()` at a value other than its no-op one. Every field of OpenAI's references (and the
vLLM extensions served) has a row, and every ignored field of a route is in its table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.schemas import (
    IGNORED_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingDefaults,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
SECTION = "## OpenAI compatibility, field by field"
CHAT_HEADING = "### Chat completions"
COMPLETIONS_HEADING = "### Completions"

EXTENSIONS = ["top_k", "min_p", "repetition_penalty", "stop_token_ids", "ignore_eos"]
CHAT_FIELDS = [
    "model", "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens",
    "max_completion_tokens", "n", "presence_penalty", "response_format", "seed", "service_tier", "stop",
    "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls",
    "user", "metadata", "store", "reasoning_effort", "modalities", "audio", "prediction",
    "web_search_options", "functions", "function_call", "safety_identifier", "prompt_cache_key", "verbosity",
]  # fmt: skip
COMPLETION_FIELDS = [
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
]  # fmt: skip
STATUSES = {"yes", "ignored", "no (400)"}

# The smallest valid body of each route, and a value for each field that the table says is refused or
# ignored: refused fields at a value other than their no-op one.
BASE: dict[type, dict[str, Any]] = {
    ChatCompletionRequest: {"messages": [{"role": "user", "content": "hi"}]},
    CompletionRequest: {"prompt": "hi"},
}
SAMPLE: dict[str, Any] = {
    "response_format": {"type": "json_object"},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "required",
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": {"name": "f"},
    "reasoning_effort": "low",
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
    "verbosity": "low",
    "best_of": 3,
    "suffix": "x",
    "user": "user-1",
    "safety_identifier": "id-1",
    "metadata": {"k": "v"},
    "store": True,
    "service_tier": "auto",
    "prompt_cache_key": "key-1",
    "parallel_tool_calls": True,
}


def _table(heading: str) -> dict[str, str]:
    """The rows of the table under `heading` in the section: field name -> "this server" cell."""
    text = DOC.read_text(encoding="utf-8")
    assert text.count(SECTION) == 1, f"docs/serving.md needs one {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    starts = [i for i, line in enumerate(section.splitlines()) if line.startswith(heading)]
    assert len(starts) == 1, f"the section needs one {heading!r} table"
    rows: dict[str, str] = {}
    lines = section.splitlines()[starts[0] + 1 :]
    in_table = False
    for line in lines:
        if not line.startswith("|"):
            if in_table:
                break
            continue
        in_table = True
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "field" or set(cells[0]) <= {"-"}:
            assert cells[0] != "field" or cells[1] == "this server", "column 2 must be 'this server'"
            continue
        match = re.fullmatch(r"`(\w+)`( \(vLLM\))?", cells[0])
        assert match, f"unexpected first cell {cells[0]!r}"
        assert match[1] not in rows, f"{match[1]} has two rows"
        rows[match[1]] = cells[1]
    assert rows, f"no rows under {heading!r}"
    return rows


TABLES = {
    ChatCompletionRequest: (CHAT_HEADING, CHAT_FIELDS + EXTENSIONS),
    CompletionRequest: (COMPLETIONS_HEADING, COMPLETION_FIELDS + EXTENSIONS),
}
CASES = [
    pytest.param(model, field, id=f"{model.__name__}.{field}")
    for model, (_, fields) in TABLES.items()
    for field in fields
]


@pytest.mark.parametrize("model", list(TABLES), ids=lambda m: m.__name__)
def test_every_reference_field_has_one_row(model: type) -> None:
    heading, fields = TABLES[model]
    rows = _table(heading)
    assert sorted(rows) == sorted(fields)
    assert set(rows.values()) <= STATUSES, f"'this server' cells must be one of {sorted(STATUSES)}"


def _also_ignored() -> set[str]:
    """The fields the sentence after the completions table says that route also accepts and ignores."""
    text = " ".join(DOC.read_text(encoding="utf-8").split(SECTION, 1)[1].split())
    match = re.search(r"this route also accepts and ignores (.*?) \(as the chat route does\)", text)
    assert match, "the sentence naming the completions route's extra ignored fields is missing"
    return set(re.findall(r"`(\w+)`", match[1]))


@pytest.mark.parametrize("model", list(TABLES), ids=lambda m: m.__name__)
def test_every_ignored_field_of_the_route_is_in_its_table(model: type) -> None:
    rows = _table(TABLES[model][0])
    extra = _also_ignored() if model is CompletionRequest else set()
    for field in IGNORED_FIELDS.keys() & model.model_fields.keys():
        if field in extra:
            assert field not in rows and ChatCompletionRequest.model_fields.keys() >= {field}
        else:
            assert rows.get(field) == "ignored", f"{field} is in IGNORED_FIELDS; the table: {rows.get(field)}"
    assert extra <= IGNORED_FIELDS.keys() & model.model_fields.keys(), "a field there is not ignored"


def test_chat_takes_best_of_only_equal_to_n() -> None:
    body = BASE[ChatCompletionRequest]
    assert ChatCompletionRequest.model_validate(body | {"best_of": 2, "n": 2}).unsupported_parameter() is None
    assert ChatCompletionRequest.model_validate(body | {"best_of": 3}).unsupported_parameter() == "best_of"


@pytest.mark.parametrize(
    ("model", "field", "noop"),
    [
        (ChatCompletionRequest, "tools", []),
        (ChatCompletionRequest, "functions", []),
        (ChatCompletionRequest, "tool_choice", "none"),
        (ChatCompletionRequest, "tool_choice", "auto"),
        (ChatCompletionRequest, "function_call", "none"),
        (ChatCompletionRequest, "function_call", "auto"),
        (ChatCompletionRequest, "response_format", {"type": "text"}),
        (CompletionRequest, "suffix", ""),
        (CompletionRequest, "best_of", 1),
    ],
)
def test_refused_fields_pass_at_their_noop_value(model: type, field: str, noop: Any) -> None:
    """The notes column: these are refused except at the no-op value it names."""
    assert model.model_validate(BASE[model] | {field: noop}).unsupported_parameter() is None


def _validate(model: type, field: str) -> Any:
    return model.model_validate(BASE[model] | {field: SAMPLE[field]})


@pytest.mark.parametrize(("model", "field"), CASES)
def test_this_server_column_matches_the_schema(model: type, field: str) -> None:
    status = _table(TABLES[model][0])[field]
    declared = field in model.model_fields
    if status == "yes":
        assert declared, f"{field} is marked yes but {model.__name__} does not declare it"
        assert field not in IGNORED_FIELDS, f"{field} is marked yes but is in IGNORED_FIELDS"
        assert field not in SAMPLE or _validate(model, field).unsupported_parameter() is None
    elif status == "ignored":
        assert declared and field in IGNORED_FIELDS, f"{field} is marked ignored but is not an ignored field"
        defaults = SamplingDefaults(max_tokens=16)
        body = _validate(model, field)
        assert getattr(body, field) == SAMPLE[field]
        assert body.unsupported_parameter() is None
        assert body.to_sampling_params(defaults) == model.model_validate(BASE[model]).to_sampling_params(
            defaults
        )
    else:
        assert status == "no (400)"
        if not declared:
            with pytest.raises(ValidationError) as caught:
                _validate(model, field)
            assert [(e["type"], e["loc"]) for e in caught.value.errors()] == [("extra_forbidden", (field,))]
        else:
            assert _validate(model, field).unsupported_parameter() == field
