"""Logprobs and multi-prompt completions through the official `openai` client on a real server.

Every logprob must equal the log-softmax of one separate forward pass of the demo model over the prompt
and the tokens generated before it (the raw model distribution, whatever the sampling parameters)."""

from __future__ import annotations

import httpx
import pytest
import torch

from nanochat.checkpoint import load_checkpoint
from tests.servers import DEMO_MODEL

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Hello! Who are you?"}]
TOLERANCE = 1e-4


class Reference:
    """The demo model in this process: one full forward, and token bytes back to ids."""

    def __init__(self) -> None:
        loaded = load_checkpoint(DEMO_MODEL)
        self.model, self.tokenizer = loaded.model.eval(), loaded.tokenizer
        vocab = self.tokenizer.get_vocab_size()
        self.ids = {self.tokenizer.id_to_token_bytes(i): i for i in range(vocab)}

    def logprobs(self, prompt: list[int], tokens: list[int]) -> torch.Tensor:
        """(len(tokens), vocab): row t is the distribution token t was drawn from."""
        with torch.inference_mode():
            logits = self.model(torch.tensor([prompt + tokens]))[0].float()
        return torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : -1]


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference()


def chat_prompt(http: httpx.Client, messages: list[dict]) -> list[int]:
    return http.post("/tokenize", json={"messages": messages}).raise_for_status().json()["tokens"]


def check_chat_entries(reference: Reference, prompt: list[int], entries, top: int, greedy: bool) -> None:
    tokens = [reference.ids[bytes(e.bytes)] for e in entries]
    expected = reference.logprobs(prompt, tokens)
    for t, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(expected[t, tokens[t]].item(), abs=TOLERANCE)
        assert entry.token == reference.tokenizer.decode([tokens[t]])
        assert len(entry.top_logprobs) == top
        values = [alt.logprob for alt in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        for alt in entry.top_logprobs:
            assert alt.logprob == pytest.approx(
                expected[t, reference.ids[bytes(alt.bytes)]].item(), abs=TOLERANCE
            )
        if top:
            assert values[0] == pytest.approx(expected[t].max().item(), abs=TOLERANCE)
        if greedy and top:  # the chosen token is the likeliest
            assert entry.top_logprobs[0].token == entry.token


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_chat_logprobs_equal_a_forward_pass(client, http, reference, temperature) -> None:
    prompt = chat_prompt(http, HELLO)
    kwargs = dict(model="demo", messages=HELLO, max_tokens=12, temperature=temperature, seed=7, logprobs=True)
    completion = client.chat.completions.create(**kwargs, top_logprobs=5)
    [choice] = completion.choices
    entries = choice.logprobs.content
    assert len(entries) == completion.usage.completion_tokens
    check_chat_entries(reference, prompt, entries, 5, greedy=temperature == 0.0)

    streamed = []
    text = ""
    for chunk in client.chat.completions.create(**kwargs, top_logprobs=5, stream=True):
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs is not None:
                assert c.logprobs.content  # a chunk with logprobs carries its tokens' entries
                streamed += c.logprobs.content
    assert text == choice.message.content  # the same seed: the same tokens
    assert [e.token for e in streamed] == [e.token for e in entries]
    check_chat_entries(reference, prompt, streamed, 5, greedy=temperature == 0.0)


def test_chat_logprobs_without_top_and_off(client) -> None:
    completion = client.chat.completions.create(
        model="demo", messages=HELLO, max_tokens=4, temperature=0, logprobs=True
    )
    entries = completion.choices[0].logprobs.content
    assert len(entries) == 4 and all(e.top_logprobs == [] and e.logprob <= 0 for e in entries)
    plain = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == completion.choices[0].message.content


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": 1}, "logprobs"),
    ],
)
def test_chat_logprobs_bad_values(http, body, param) -> None:
    response = http.post("/v1/chat/completions", json={"messages": HELLO, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def completion_token_ids(reference: Reference, logprobs) -> list[int]:
    return [reference.ids[t.encode("utf-8")] for t in logprobs.tokens]


def test_completion_logprobs_equal_a_forward_pass(client, http, reference) -> None:
    prompt_text = "The LORD"
    prompt = http.post("/tokenize", json={"prompt": prompt_text}).json()["tokens"]
    kwargs = dict(model="demo", prompt=prompt_text, max_tokens=10, temperature=0.8, seed=3, logprobs=3)
    completion = client.completions.create(**kwargs)
    [choice] = completion.choices
    logprobs = choice.logprobs
    tokens = completion_token_ids(reference, logprobs)
    expected = reference.logprobs(prompt, tokens)
    assert len(tokens) == completion.usage.completion_tokens
    for t, token in enumerate(tokens):
        assert logprobs.token_logprobs[t] == pytest.approx(expected[t, token].item(), abs=TOLERANCE)
        top = logprobs.top_logprobs[t]
        assert len(top) <= 3  # keyed by text
        best = torch.topk(expected[t], 3)
        assert max(top.values()) == pytest.approx(best.values[0].item(), abs=TOLERANCE)
        for text, value in top.items():
            assert value == pytest.approx(
                expected[t, reference.ids[text.encode("utf-8")]].item(), abs=TOLERANCE
            )
    offsets = [0]
    for text in logprobs.tokens[:-1]:
        offsets.append(offsets[-1] + len(text))
    assert logprobs.text_offset == offsets
    if choice.finish_reason == "length":
        assert "".join(logprobs.tokens) == choice.text

    chunks = [c for c in client.completions.create(**kwargs, stream=True) if c.choices]
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs is not None]
    assert [t for s in streamed for t in s.tokens] == logprobs.tokens
    assert [o for s in streamed for o in s.text_offset] == logprobs.text_offset
    values = [v for s in streamed for v in s.token_logprobs]
    assert values == pytest.approx(logprobs.token_logprobs, abs=TOLERANCE)


def test_completion_prompts_are_indexed_across_prompts(client, http) -> None:
    prompts = ["The LORD", "Hello"]

    def create(prompt, n=1, **kwargs):
        return client.completions.create(
            model="demo", prompt=prompt, n=n, max_tokens=6, temperature=0, **kwargs
        )

    alone = [create(p) for p in prompts]
    both = create(prompts, n=2)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    assert [c.text for c in both.choices] == [alone[0].choices[0].text] * 2 + [alone[1].choices[0].text] * 2
    assert both.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert both.usage.completion_tokens == 2 * sum(a.usage.completion_tokens for a in alone)

    # token ids, as /tokenize gives them, are the same prompts
    ids = [http.post("/tokenize", json={"prompt": p}).json()["tokens"] for p in prompts]
    assert [c.text for c in create(ids).choices] == [a.choices[0].text for a in alone]
    assert create(ids[0]).choices[0].text == alone[0].choices[0].text

    texts: dict[int, str] = {}
    chunks = list(create(prompts, n=2, stream=True, stream_options={"include_usage": True}))
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert [texts[i] for i in range(4)] == [c.text for c in both.choices]
    assert chunks[-1].usage.total_tokens == both.usage.total_tokens


def test_completion_echo(client) -> None:
    kwargs = dict(model="demo", prompt="The LORD", max_tokens=5, temperature=0)
    plain = client.completions.create(**kwargs).choices[0].text
    assert client.completions.create(**kwargs, echo=True).choices[0].text == "The LORD" + plain
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kwargs, echo=True, stream=True))
    assert streamed == "The LORD" + plain


@pytest.mark.parametrize("stream", [False, True])
def test_completion_echo_logprobs_score_the_prompt(client, http, reference, stream) -> None:
    """echo + logprobs: the prompt's tokens with their logprobs, then the generated ones', all equal to
    one forward pass. A text prompt starts after the server's BOS token; token ids start with a null."""
    text_prompt = "The LORD said unto Moses"
    ids = http.post("/tokenize", json={"prompt": text_prompt}).json()["tokens"]
    for prompt, skipped in ((text_prompt, 1), (ids[1:], 0)):
        kwargs = dict(model="demo", prompt=prompt, max_tokens=4, temperature=0, logprobs=2, echo=True)
        if stream:
            chunks = [c.choices[0] for c in client.completions.create(**kwargs, stream=True) if c.choices]
            text = "".join(c.text for c in chunks)
            pieces = [c.logprobs for c in chunks if c.logprobs is not None]
            tokens = [t for p in pieces for t in p.tokens]
            values = [v for p in pieces for v in p.token_logprobs]
            offsets = [o for p in pieces for o in p.text_offset]
        else:
            choice = client.completions.create(**kwargs).choices[0]
            text, tokens = choice.text, choice.logprobs.tokens
            values, offsets = choice.logprobs.token_logprobs, choice.logprobs.text_offset
        sent = ids[skipped:] if skipped else ids[1:]
        assert text.startswith(reference.tokenizer.decode(sent))
        all_ids = [reference.ids[t.encode("utf-8")] for t in tokens]
        assert all_ids[: len(sent)] == sent
        assert len(sent) < len(all_ids) <= len(sent) + 4  # then the generated tokens
        full = ids[:1] + all_ids if skipped else all_ids
        expected = reference.logprobs(full[:1], full[1:])  # row t: the distribution of full[t + 1]
        scored = values if skipped else values[1:]
        if not skipped:
            assert values[0] is None
        assert scored == pytest.approx(
            [expected[t, full[t + 1]].item() for t in range(len(scored))], abs=TOLERANCE
        )
        assert offsets[0] == 0 and all(
            b - a == len(t) for a, b, t in zip(offsets, offsets[1:], tokens, strict=False)
        )


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_zero_with_echo_scores_the_prompt_only(client, stream) -> None:
    """What evaluation harnesses send for a loglikelihood: the prompt's logprobs, nothing generated."""
    prompt = "The LORD said unto Moses"
    kwargs = dict(model="demo", prompt=prompt, temperature=0, logprobs=1, echo=True)
    full = client.completions.create(**kwargs, max_tokens=3).choices[0].logprobs
    if stream:
        chunks = list(
            client.completions.create(
                **kwargs, max_tokens=0, stream=True, stream_options={"include_usage": True}
            )
        )
        choices = [c.choices[0] for c in chunks if c.choices]
        text = "".join(c.text for c in choices)
        tokens = [t for c in choices if c.logprobs for t in c.logprobs.tokens]
        values = [v for c in choices if c.logprobs for v in c.logprobs.token_logprobs]
        reason, usage = choices[-1].finish_reason, chunks[-1].usage
    else:
        completion = client.completions.create(**kwargs, max_tokens=0)
        [choice] = completion.choices
        text, tokens, values = choice.text, choice.logprobs.tokens, choice.logprobs.token_logprobs
        reason, usage = choice.finish_reason, completion.usage
    assert text == prompt and "".join(tokens) == prompt
    assert reason == "length" and usage.completion_tokens == 0
    assert values == pytest.approx(full.token_logprobs[: len(tokens)], abs=TOLERANCE)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": "a", "suffix": "b"}, "suffix", "unsupported_parameter"),
        # chat's field: the legacy API has none, and a field that would be ignored is refused
        ({"prompt": "a", "logprobs": 2, "top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
        ({"prompt": "a", "logprobs": 6}, "logprobs", "invalid_value"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"prompt": "a", "max_tokens": -1, "echo": True}, "max_tokens", "invalid_value"),
        ({"prompt": "a", "logprobs": True}, "logprobs", None),
        ({"prompt": [1, 2, 999_999]}, "prompt.2", "invalid_value"),
        ({"prompt": []}, "prompt", None),
        ({"prompt": [[]]}, "prompt", None),
        ({"prompt": ["a"] * 3, "n": 2}, "n", "invalid_value"),
    ],
)
def test_completion_bad_values(http, body, param, code) -> None:
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param or error["param"].startswith(param), error
    if code:
        assert error["code"] == code


def test_text_offsets_count_characters_not_replacement_characters() -> None:
    """Tokens that split a character (an accent, a dash, an emoji: one to four byte tokens each in the demo
    tokenizer) share that character's offset; every whole token's text is found at its offset."""
    from app.api.serving import completion_logprobs
    from app.scheduler import Delta
    from nanochat.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_directory(DEMO_MODEL)
    text = "naïve café — 🙂 ok"
    ids = tokenizer.encode(text)
    pieces = [tokenizer.id_to_token_bytes(i) for i in ids]
    assert any(len(piece.decode("utf-8", errors="replace")) != len(piece.decode("utf-8", errors="ignore"))
               for piece in pieces), "no token splits a character: the test would prove nothing"  # fmt: skip
    scored = [Delta(0, token, "", None, -0.5, ((token, -0.5),)) for token in ids]
    logprobs = completion_logprobs(tokenizer, scored, offset=3)  # after a 3-character echo
    starts = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    whole = b"".join(pieces)
    expected = [3 + len(whole[:start].decode("utf-8", errors="ignore")) for start in starts]
    assert logprobs.text_offset == expected
    assert logprobs.text_offset[-1] == 3 + len(text) - 1  # "k", the last character
    for token_text, at in zip(logprobs.tokens, logprobs.text_offset, strict=True):
        if "\ufffd" not in token_text:
            assert text[at - 3 :].startswith(token_text), (token_text, at)
