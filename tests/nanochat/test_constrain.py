"""Constrained decoding (nanochat/constrain.py inside nanochat/batching.py's sampling): every constrained
continuation's JSON parses and validates, free rows in the same batch are untouched, and the trigger /
forced trigger / end token mechanics of tool calls."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import pytest
import torch

from nanochat.backend import Constraint, EngineError, SamplingParams
from nanochat.constrain import GrammarError, canonical_schema, check_schema
from nanochat.engine import Engine
from tests.nanochat.test_prefix_cache import run

# Finite, so even a random model completes it in a few dozen tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        "inner": {
            "type": "object",
            "properties": {"x": {"type": "boolean"}},
            "required": ["x"],
            "additionalProperties": False,
        },
    },
    "required": ["color", "n", "ok", "tags", "inner"],
    "additionalProperties": False,
}
CONSTRAINED = Constraint(canonical_schema(SCHEMA))


@pytest.fixture
def engine(make_model, small_tokenizer) -> Engine:
    return Engine(make_model(sequence_len=256), small_tokenizer, max_batch=8)


def special(engine: Engine, name: str) -> int:
    return engine.tokenizer.encode_special(name)


def valid_json(engine: Engine, tokens: list[int], end: str = "<|assistant_end|>") -> dict:
    """The JSON a constrained continuation wrote up to its end token, validated against SCHEMA (a choice
    of n > 1 keeps taking tokens after it finished, as nanochat's do)."""
    value = json.loads(engine.tokenizer.decode(tokens[: tokens.index(special(engine, end))]))
    jsonschema.validate(value, SCHEMA)
    return value


def finish(generation) -> list[str | None]:
    return [c.finish_reason for c in generation.continuations]


def drive(engine: Engine, requests: list[tuple[list[int], SamplingParams]]):
    """Run the requests in one batch (begin and prefill each, then decode them all together)."""
    generations = []
    for prompt, params in requests:
        generation = engine.begin(prompt, params)
        while generation.prefill_remaining:
            engine.prefill(generation)
        generations.append(generation)
    while not all(g.done for g in generations):
        engine.decode_step()
    return generations


def test_constrained_rows_write_valid_json_and_free_rows_in_the_batch_are_untouched(engine):
    prompts = [[engine.tokenizer.get_bos_token_id(), 5 + k, 40 + 3 * k] for k in range(3)]
    free = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    alone = [run(engine, p, free) for p in prompts[:2]]
    requests = [
        (prompts[0], free),
        (prompts[1], SamplingParams(max_tokens=80, temperature=0.0, constraint=CONSTRAINED)),
        (prompts[1], free),  # the constrained row's prompt, free
        (prompts[2], SamplingParams(max_tokens=80, temperature=1.0, seed=3, n=3, constraint=CONSTRAINED)),
    ]
    generations = drive(engine, requests)
    assert [c.tokens for c in generations[0].continuations] == alone[0]
    assert [c.tokens for c in generations[2].continuations] == alone[1]
    assert finish(generations[1]) == ["stop"] and finish(generations[3]) == ["stop"] * 3
    valid_json(engine, generations[1].continuations[0].tokens)
    sampled = [valid_json(engine, c.tokens) for c in generations[3].continuations]
    assert len({json.dumps(v) for v in sampled}) > 1  # n choices are independent samples
    # unconstrained, the same model writes no JSON at all
    assert alone[1][0][0] != engine.tokenizer.encode("{")[0]


def test_greedy_constrained_is_deterministic_and_sampling_follows_the_seed(engine):
    prompt = [engine.tokenizer.get_bos_token_id(), 7]
    greedy = SamplingParams(max_tokens=80, temperature=0.0, constraint=CONSTRAINED)
    assert run(engine, prompt, greedy) == run(engine, prompt, greedy)
    seeded = [
        run(
            engine,
            prompt,
            SamplingParams(max_tokens=80, temperature=0.9, top_k=50, seed=s, constraint=CONSTRAINED),
        )
        for s in range(4)
    ]
    for tokens in seeded:
        valid_json(engine, tokens[0])
    assert len({tuple(t[0]) for t in seeded}) > 1


def test_penalties_logit_bias_and_shared_first_token_keep_the_json_valid(engine):
    prompt = [engine.tokenizer.get_bos_token_id(), 9]
    quote = engine.tokenizer.encode('"')[0]
    params = SamplingParams(
        max_tokens=80,
        temperature=0.7,
        seed=1,
        n=2,
        shared_first_token=True,
        frequency_penalty=2.0,
        repetition_penalty=1.5,
        logit_bias=((quote, -100.0), (special(engine, "<|python_start|>"), 100.0)),
        constraint=CONSTRAINED,
    )
    for tokens in run(engine, prompt, params):
        valid_json(engine, tokens)


def test_max_tokens_cuts_with_length(engine):
    prompt = [engine.tokenizer.get_bos_token_id(), 7]
    (tokens,) = run(engine, prompt, SamplingParams(max_tokens=3, temperature=0.0, constraint=CONSTRAINED))
    generation = drive(
        engine, [(prompt, SamplingParams(max_tokens=3, temperature=0.0, constraint=CONSTRAINED))]
    )
    assert finish(generation[0]) == ["length"] and len(tokens) == 3
    assert engine.tokenizer.decode(tokens).startswith("{")


def test_trigger_then_json_then_end_token_finishes_with_its_reason(engine):
    """A tool call: free text until <|python_start|> (here made certain by a logit bias), then the
    arguments' JSON, then <|python_end|>, finishing "tool_calls"."""
    start, end = special(engine, "<|python_start|>"), special(engine, "<|python_end|>")
    call = Constraint(CONSTRAINED.schema, trigger_token=start, end_token=end, finish_reason="tool_calls")
    prompt = [engine.tokenizer.get_bos_token_id(), 11]
    params = SamplingParams(max_tokens=80, temperature=1.0, seed=2, tools=False, constraint=call)
    biased = replace(params, logit_bias=((start, 100.0),))
    (tokens,) = run(engine, prompt, biased)
    assert tokens[0] == start  # sampled freely (the bias), then constrained
    valid_json(engine, tokens[1:], end="<|python_end|>")
    (generation,) = drive(engine, [(prompt, biased)])
    assert finish(generation) == ["tool_calls"]
    # never triggered: free text, finished as usual, no JSON asked
    never = replace(params, logit_bias=((start, -100.0),), ignore_eos=True)
    (generation,) = drive(engine, [(prompt, never)])
    assert finish(generation) == ["length"] and start not in generation.continuations[0].tokens


def test_forced_trigger_is_the_first_token_and_n_choices_each_write_their_own_json(engine):
    start, end = special(engine, "<|python_start|>"), special(engine, "<|python_end|>")
    call = Constraint(
        CONSTRAINED.schema, start, force_trigger=True, end_token=end, finish_reason="tool_calls"
    )
    prompt = [engine.tokenizer.get_bos_token_id(), 13]
    params = SamplingParams(max_tokens=80, temperature=1.0, seed=4, n=3, constraint=call)
    (generation,) = drive(engine, [(prompt, params)])
    assert finish(generation) == ["tool_calls"] * 3
    for cont in generation.continuations:
        assert cont.tokens[0] == start and not cont.forced  # the calculator never ran on the JSON
        valid_json(engine, cont.tokens[1:], end="<|python_end|>")


def test_logprobs_report_the_models_raw_distribution(engine):
    prompt = [engine.tokenizer.get_bos_token_id(), 7, 8]
    params = SamplingParams(max_tokens=4, temperature=0.0, logprobs=2, constraint=CONSTRAINED)
    generation = engine.begin(prompt, params)
    (event,) = engine.prefill(generation)
    raw = torch.log_softmax(engine.model(torch.tensor([prompt]))[0, -1].float(), dim=-1)
    assert event.token == engine.tokenizer.encode("{")[0]
    assert event.logprob == pytest.approx(raw[event.token].item(), abs=1e-4)
    assert event.top_logprobs[0][0] == raw.argmax().item() != event.token
    engine.cancel(generation)


def test_masks_allow_no_special_token_inside_and_only_the_end_token_after(engine, small_tokenizer):
    grammars = engine._make_grammars()
    specials = sorted(small_tokenizer.get_special_tokens().values())
    end = special(engine, "<|python_end|>")
    rows = [grammars.row(CONSTRAINED), grammars.row(Constraint(CONSTRAINED.schema, end_token=end))]
    text = json.dumps({"color": "red", "n": 4, "ok": True, "tags": [], "inner": {"x": False}})
    ids = small_tokenizer.encode(text.replace(" ", ""))
    for token in ids:
        allowed = grammars.allowed(rows)
        assert allowed[:, token].all() and not allowed[:, specials].any()
        assert [r.advance(token) for r in rows] == [None, None]
    allowed = grammars.allowed(rows)
    assert allowed[0].nonzero().flatten().tolist() == [special(engine, "<|assistant_end|>")]
    assert allowed[1].nonzero().flatten().tolist() == [end]
    assert [r.advance(r.end_token) for r in rows] == ["stop", "stop"]


def test_grammars_are_compiled_once_per_schema(engine):
    grammars = engine._make_grammars()
    first = grammars.matcher(CONSTRAINED.schema)
    assert list(grammars._compiled) == [CONSTRAINED.schema]
    assert grammars.matcher(CONSTRAINED.schema) is not first  # each continuation its own copy
    assert len(grammars._compiled) == 1


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"$ref": "https://example.com/other.json"}, "https://example.com/other.json"),
        ({"type": "string", "format": "no-such-format"}, "no-such-format"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "Unsatisfiable"),
        ({"type": "string", "pattern": "("}, "regex"),
    ],
)
def test_unsupported_schemas_are_refused_naming_the_feature(engine, schema, named):
    with pytest.raises(GrammarError, match=named.replace("$", r"\$").replace(".", r"\.")):
        check_schema(canonical_schema(schema))
    with pytest.raises(EngineError, match="unsupported JSON schema"):
        engine.begin([1, 2], SamplingParams(constraint=Constraint(canonical_schema(schema))))
    assert engine.can_begin(1)  # nothing reserved


def test_constraint_token_ids_are_checked(engine):
    with pytest.raises(EngineError, match="outside the vocabulary"):
        engine.begin([1, 2], SamplingParams(constraint=Constraint(end_token=10**6)))
    with pytest.raises(EngineError, match="force_trigger needs a trigger_token"):
        SamplingParams(constraint=Constraint(force_trigger=True))


def test_json_object_mode_writes_an_object(engine):
    prompt = [engine.tokenizer.get_bos_token_id(), 7]
    (tokens,) = run(engine, prompt, SamplingParams(max_tokens=120, temperature=0.0, constraint=Constraint()))
    if tokens[-1] == special(engine, "<|assistant_end|>"):
        assert isinstance(json.loads(engine.tokenizer.decode(tokens[:-1])), dict)
    else:
        assert engine.tokenizer.decode(tokens).startswith("{")


def test_grammars_from_a_transformers_tokenizer():
    from nanochat.hf_engine import HFEngine
    from tests.nanochat.test_hf_export import demo_export

    hf = HFEngine.from_pretrained(demo_export(), max_batch=2)
    prompt = hf.tokenizer.chat_prompt([{"role": "user", "content": "hi"}])
    (tokens,) = run(hf, prompt, SamplingParams(max_tokens=80, temperature=0.0, constraint=CONSTRAINED))
    eos = hf.tokenizer.hf.eos_token_id
    assert tokens[-1] == eos
    jsonschema.validate(json.loads(hf.tokenizer.hf.decode(tokens[:-1])), SCHEMA)


def test_a_token_the_mask_refused_ends_only_that_choice(engine):
    grammars = engine._make_grammars()
    row = grammars.row(CONSTRAINED)
    assert row.advance(engine.tokenizer.encode("x")[0]) == "stop"  # not JSON: the choice ends
    assert row.finished and not row.masked
