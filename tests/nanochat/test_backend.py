"""The backend contract: nanochat's Engine and the Hugging Face engine are both `GenerationBackend`s (their
tokenizers `ChatTokenizer`s), member by member and signature by signature, and they go through the one
shared lifecycle: the same states, rows and finish rules from begin to done, cancel and reset."""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

import pytest

from nanochat.backend import (
    ChatTokenizer,
    Generation,
    GenerationBackend,
    GenerationState,
    SamplingParams,
    TokenEvent,
)
from nanochat.checkpoint import load_checkpoint
from nanochat.engine import Engine
from nanochat.hf_engine import HFEngine
from tests.nanochat.test_hf_export import DEMO, HELDOUT, demo_export

APP = Path(__file__).resolve().parents[2] / "app"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nanochat_engine() -> Engine:
    demo = load_checkpoint(DEMO)
    return Engine(demo.model, demo.tokenizer, max_batch=3)


@pytest.fixture(scope="module")
def hf_engine() -> HFEngine:
    return HFEngine.from_pretrained(demo_export(), max_batch=3)


def as_backends(engine: Engine, hf: HFEngine) -> list[GenerationBackend]:
    """Typed: a static checker verifies that both engines are GenerationBackends (no cast, no ignore)."""
    backends: list[GenerationBackend] = [engine, hf]
    return backends


@pytest.fixture(params=["nanochat", "hf"])
def backend(request, nanochat_engine: Engine, hf_engine: HFEngine) -> GenerationBackend:
    return as_backends(nanochat_engine, hf_engine)[request.param == "hf"]


def mismatches(protocol: type, obj: object) -> list[str]:
    """How `obj` falls short of `protocol`: a missing member, a property value of the wrong type, or a
    method that cannot be called the way the protocol says (a parameter missing, renamed, moved, or
    without the protocol's default; an extra parameter without a default)."""
    problems = []
    for name, member in vars(protocol).items():
        if name.startswith("_"):
            continue
        if not hasattr(obj, name):
            problems.append(f"{name}: missing")
        elif isinstance(member, property):
            expected = typing.get_type_hints(member.fget)["return"]
            if not isinstance(getattr(obj, name), typing.get_origin(expected) or expected):
                problems.append(f"{name}: {getattr(obj, name)!r} is not a {expected}")
        else:
            problems += [f"{name}: {p}" for p in _call_mismatches(member, getattr(obj, name))]
    return problems


def _call_mismatches(expected_fn, actual_fn) -> list[str]:
    expected = list(inspect.signature(expected_fn).parameters.values())[1:]  # without self
    actual = inspect.signature(actual_fn).parameters  # bound: without self
    kinds = {p.kind for p in actual.values()}
    positional = [p.name for p in actual.values() if p.kind <= inspect.Parameter.POSITIONAL_OR_KEYWORD]
    problems = []
    for i, p in enumerate(expected):
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            if inspect.Parameter.VAR_KEYWORD not in kinds:
                problems.append("takes no **kwargs")
            continue
        q = actual.get(p.name)
        if q is None:
            problems.append(f"no parameter {p.name!r}")
        elif positional[i : i + 1] != [p.name]:
            problems.append(f"{p.name!r} is not positional parameter {i}")
        elif p.default is not inspect.Parameter.empty and q.default is inspect.Parameter.empty:
            problems.append(f"{p.name!r} has no default")
    names = {p.name for p in expected}
    for q in actual.values():
        if q.name not in names and q.kind <= inspect.Parameter.KEYWORD_ONLY and q.default is q.empty:
            problems.append(f"extra parameter {q.name!r} without a default")
    return problems


def test_both_engines_implement_the_backend_protocol(nanochat_engine, hf_engine):
    for engine in as_backends(nanochat_engine, hf_engine):
        assert isinstance(engine, GenerationBackend)
        assert mismatches(GenerationBackend, engine) == []
        assert isinstance(engine.tokenizer, ChatTokenizer)
        assert mismatches(ChatTokenizer, engine.tokenizer) == []


def test_the_structural_check_catches_what_a_backend_lacks(nanochat_engine):
    class Renamed(Engine):
        def prefill(self, gen, max_tokens=None):  # the protocol's parameter is `generation`
            return super().prefill(gen, max_tokens)

        def begin(self, prompt_ids, params, priority):  # an extra parameter without a default
            return super().begin(prompt_ids, params)

    class NoDecode:
        def __getattr__(self, name):
            if name == "decode_step":
                raise AttributeError(name)
            return getattr(nanochat_engine, name)

    renamed = Renamed.__new__(Renamed)
    renamed.__dict__.update(vars(nanochat_engine))
    assert mismatches(GenerationBackend, renamed) == [
        "begin: extra parameter 'priority' without a default",
        "prefill: no parameter 'generation'",
        "prefill: extra parameter 'gen' without a default",
    ]
    assert "decode_step: missing" in mismatches(GenerationBackend, NoDecode())
    assert not isinstance(object(), GenerationBackend)


def test_one_lifecycle_from_begin_to_done(backend):
    rows = backend.max_batch
    prompt = backend.tokenizer.chat_prompt([{"role": "user", "content": "Hello, how are you?"}])
    generation = backend.begin(prompt, SamplingParams(max_tokens=3, temperature=0.0, n=2, ignore_eos=True))
    assert isinstance(generation, Generation) and generation.state is GenerationState.PREFILLING
    assert (backend.free_rows(), backend.can_begin(), backend.num_decoding) == (rows - 2, False, 0)
    events: list[TokenEvent] = []
    while generation.prefill_remaining:
        events += backend.prefill(generation, 4)
    assert generation.state is GenerationState.DECODING and backend.num_decoding == 2
    assert [(e.index, e.token) for e in events] == [(0, events[0].token), (1, events[0].token)]  # shared
    events += backend.decode_step()
    events += backend.decode_step()
    assert generation.state is GenerationState.DONE and generation.done
    assert (backend.num_decoding, backend.free_rows()) == (0, rows)
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"] * 2
    assert all(e.generation is generation for e in events) and backend.decode_step() == []


def test_one_lifecycle_for_cancel_and_reset(backend):
    prompt = backend.tokenizer.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    params = SamplingParams(max_tokens=20, temperature=0.0)
    prefilling = backend.begin(prompt, params)
    backend.cancel(prefilling)
    assert prefilling.state is GenerationState.DONE and backend.can_begin(backend.max_batch)
    decoding = backend.begin(prompt, params)
    while decoding.prefill_remaining:
        backend.prefill(decoding)
    other = backend.begin(prompt, params)
    assert backend.num_decoding == 1 and backend.free_rows() == backend.max_batch - 2
    backend.cancel(decoding)
    assert decoding.state is GenerationState.DONE and backend.num_decoding == 0
    backend.reset()
    assert other.state is GenerationState.DONE and backend.can_begin(backend.max_batch)


def test_one_stop_rule_for_both_engines(backend):
    """An end-of-sequence token stops a continuation ("stop"); with ignore_eos it goes on to max_tokens."""
    end = backend.tokenizer.encode_special("<|assistant_end|>")
    assert end in backend.eos_token_ids
    prompt = backend.tokenizer.chat_prompt([{"role": "user", "content": "Hello, how are you?"}])
    runs = []
    for ignore_eos in (False, True):
        generation = backend.begin(
            prompt, SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=ignore_eos)
        )
        events = []
        while generation.prefill_remaining:
            events += backend.prefill(generation)
        while not generation.done:
            events += backend.decode_step()
        runs.append(events)
    stopped, went_on = runs
    assert (stopped[-1].finish_reason, stopped[-1].token) == ("stop", end) and len(stopped) < 64
    assert went_on[-1].finish_reason == "length" and len(went_on) == 64
    assert went_on[len(stopped) - 1].token == end  # the same greedy tokens, past the end


def test_chat_prompt_is_the_prompt_the_service_rendered_before(nanochat_engine, hf_engine):
    """nanochat: the conversation, uncut, then <|assistant_start|>; the exported model's chat template
    gives the same ids."""
    ours = nanochat_engine.tokenizer
    for conversation in HELDOUT[:10]:
        messages = conversation["messages"][:-1]
        ids, _ = ours.render_conversation({"messages": messages}, max_tokens=2**62)
        assert ours.chat_prompt(messages) == [*ids, ours.encode_special("<|assistant_start|>")]
        assert hf_engine.tokenizer.chat_prompt(messages) == ours.chat_prompt(messages)
    long = [{"role": "user", "content": "word " * 3000}]
    assert len(ours.chat_prompt(long)) > 2048  # not cut: the service checks the context itself


def test_the_service_knows_only_the_protocol():
    """No isinstance on engine or tokenizer types, no type: ignore to pass one engine for another."""
    for path in APP.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"isinstance\([^)]*(Tokenizer|Engine)\b", text), path
        assert not re.search(r"type: ignore.*(Engine|engine|Tokenizer)", text), path
