"""Sampling controls, independent choices and the field policy of the OpenAI routes, through the official
`openai` client against real demo-model servers (vLLM's extensions go in `extra_body`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import openai
import pytest

from app.schemas import IGNORED_FIELDS
from nanochat.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tests.servers import Server

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = Tokenizer.from_directory(REPO_ROOT / "models" / "demo")
DOGS = [{"role": "user", "content": "Tell me about dogs"}]
CATS = [{"role": "user", "content": "Tell me about cats"}]
STORY = [{"role": "user", "content": "Tell me a story"}]


def reply(client: openai.OpenAI, messages=CATS, **kwargs) -> str:
    kwargs.setdefault("max_tokens", 20)
    completion = client.chat.completions.create(model="demo", messages=messages, **kwargs)
    return completion.choices[0].message.content


def repeats(text: str) -> int:
    """Tokens of the text that repeat an earlier one."""
    ids = TOKENIZER.encode(text)
    return len(ids) - len(set(ids))


@pytest.mark.parametrize(
    "penalty",
    [
        {"frequency_penalty": 1.0},
        {"presence_penalty": 1.0},
        {"extra_body": {"repetition_penalty": 1.3, "ignore_eos": True}},
    ],
    ids=["frequency", "presence", "repetition"],
)
def test_penalties_lower_the_repeats_of_a_long_sampled_reply(client: openai.OpenAI, penalty: dict) -> None:
    common = {"messages": DOGS, "max_tokens": 150, "temperature": 1.0, "seed": 1}
    plain = reply(client, **common, extra_body={"ignore_eos": True})
    penalized = reply(client, **common, **{"extra_body": {"ignore_eos": True}, **penalty})
    assert repeats(penalized) < repeats(plain)


def test_logit_bias_forces_and_bans_a_token(client: openai.OpenAI) -> None:
    do = TOKENIZER.encode(" do")[0]
    assert reply(client, max_tokens=5, temperature=0, logit_bias={str(do): 100}) == " do" * 5
    greedy = reply(client, temperature=0)
    first = TOKENIZER.encode(greedy)[0]
    banned = reply(client, temperature=0, logit_bias={str(first): -100})
    assert not banned.startswith(TOKENIZER.decode([first]))


def test_min_p_one_is_greedy(client: openai.OpenAI) -> None:
    assert reply(client, temperature=1.0, seed=5, extra_body={"min_p": 1.0}) == reply(client, temperature=0)
    assert reply(client, temperature=1.0, seed=5) != reply(client, temperature=0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_tiny_repetition_penalty_is_served(client: openai.OpenAI, temperature: float) -> None:
    """The fuzzer's 500: 5e-324 is a valid penalty but 0 in float32."""
    text = reply(client, temperature=temperature, seed=1, extra_body={"repetition_penalty": 5e-324})
    assert isinstance(text, str) and text


def test_stop_token_ids_end_a_choice(client: openai.OpenAI) -> None:
    do = TOKENIZER.encode(" do")[0]
    body = {"logit_bias": {str(do): 100}, "stop_token_ids": [do]}
    completion = client.chat.completions.create(
        model="demo", messages=CATS, max_tokens=5, temperature=0, extra_body=body
    )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logit_bias": {"999999": 5}}, "logit_bias"),
        ({"logit_bias": {"dog": 5}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"stop_token_ids": [99_999]}, "stop_token_ids"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
    ],
)
def test_bad_sampling_values_are_400s_naming_the_field(client: openai.OpenAI, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        reply(client, extra_body=body)
    assert caught.value.body["param"] == param
    assert caught.value.body["code"] == "invalid_value"


# ---- n: independent choices -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eight(start_server: Callable[..., Server]) -> Iterator[openai.OpenAI]:
    server = start_server({"NANOCHAT_MAX_N": "8"})
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def first_tokens(client: openai.OpenAI, n: int, seed: int, **extra) -> list[str]:
    completion = client.chat.completions.create(
        model="demo", messages=STORY, n=n, max_tokens=1, temperature=1.0, seed=seed, extra_body=extra
    )
    return [choice.message.content for choice in sorted(completion.choices, key=lambda c: c.index)]


def test_n_choices_sample_their_own_first_token(eight: openai.OpenAI) -> None:
    firsts = first_tokens(eight, 8, seed=1)
    assert len(set(firsts)) > 1
    assert first_tokens(eight, 8, seed=1) == firsts  # the seed repeats them
    assert [first_tokens(eight, 1, seed=1 + i)[0] for i in range(8)] == firsts  # choice i: seed + i


def test_nanochat_shared_first_token(eight: openai.OpenAI) -> None:
    firsts = first_tokens(eight, 8, seed=1, nanochat_shared_first_token=True)
    assert len(set(firsts)) == 1


# ---- the field policy -------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ["chat", "completions"])
def test_an_unknown_field_is_a_400_naming_it(client: openai.OpenAI, route: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        if route == "chat":
            reply(client, extra_body={"frobnicate": 1})
        else:
            client.completions.create(model="demo", prompt="The", max_tokens=3, extra_body={"frobnicate": 1})
    assert caught.value.body["param"] == "frobnicate"
    assert caught.value.body["code"] == "unsupported_parameter"
    assert "unsupported field" in caught.value.body["message"]


def test_ignored_fields_change_nothing_and_are_documented(client: openai.OpenAI) -> None:
    values = {
        "user": "u1",
        "safety_identifier": "s1",
        "metadata": {"team": "a"},
        "store": False,
        "service_tier": "auto",
        "prompt_cache_key": "k",
    }
    assert set(values) == set(IGNORED_FIELDS)
    assert reply(client, temperature=0, extra_body=values) == reply(client, temperature=0)
    docs = (REPO_ROOT / "docs" / "serving.md").read_text()
    section = docs[docs.index("## Request fields") :]
    assert all(f"`{name}`" in section for name in IGNORED_FIELDS)
