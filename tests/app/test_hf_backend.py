"""NANOCHAT_BACKEND=hf (alias MODEL_BACKEND) on real `python -m app` servers: the demo model exported with
`nanochat export hf` and served by HFEngine through the same scheduler, API, limits and metrics, answering
greedy requests exactly as the nanochat backend does; a transformers model with another chat template (the
prompt is that template's); and a folder that is not a Hugging Face model (clear errors)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from app.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # an export and three servers: ~35 s

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "models" / "demo"
HELDOUT = [json.loads(line) for line in (DEMO / "heldout.jsonl").read_text().splitlines() if line.strip()]
PROMPTS = list(dict.fromkeys(c["messages"][0]["content"] for c in HELDOUT))[:6]
GREEDY = {"temperature": 0, "max_tokens": 24}
NO_CLASSIFIER = {"NANOCHAT_CLASSIFIER": ""}  # not under test here: spare the shared cores


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def served(client: openai.OpenAI) -> str:
    """The name the server serves its model under (a request naming another is a 404)."""
    return client.models.list().data[0].id


def answer(client: openai.OpenAI, text: str, **kwargs) -> tuple[str, str, int, int]:
    done = client.chat.completions.create(model=served(client), messages=user(text), **{**GREEDY, **kwargs})
    choice = done.choices[0]
    return (
        choice.message.content,
        choice.finish_reason,
        done.usage.prompt_tokens,
        done.usage.completion_tokens,
    )


@pytest.fixture(scope="session")
def hf_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model exported once with the CLI, as a user would."""
    out = tmp_path_factory.mktemp("export") / "hf-demo"
    command = [sys.executable, "-m", "nanochat", "export", "hf", "--checkpoint", str(DEMO), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "config.json").is_file()
    return out


@pytest.fixture(scope="module")
def hf_url(start_server, hf_demo: Path) -> str:
    return start_server({"MODEL_BACKEND": "hf", "NANOCHAT_CHECKPOINT": str(hf_demo), **NO_CLASSIFIER}).url


@pytest.fixture(scope="module")
def hf(hf_url: str) -> Iterator[openai.OpenAI]:
    with client_for(hf_url) as client:
        yield client


@pytest.fixture(scope="module")
def ours(base_url: str) -> Iterator[openai.OpenAI]:
    """The nanochat backend on the same model (conftest's shared demo server)."""
    with client_for(base_url) as client:
        yield client


def test_models_names_the_folder_and_the_backend(hf: openai.OpenAI, ours: openai.OpenAI) -> None:
    [model] = hf.models.list().data
    assert model.id == "hf-demo" and model.backend == "hf"
    assert hf.models.retrieve("hf-demo").id == "hf-demo"
    assert ours.models.list().data[0].backend == "nanochat"


def test_greedy_chat_equals_the_nanochat_backend(hf: openai.OpenAI, ours: openai.OpenAI) -> None:
    for text in PROMPTS:
        theirs = answer(hf, text)
        assert theirs == answer(ours, text), text
        assert theirs[3] > 0
    # past the end of the turn: longer sequences, the same tokens
    long = {"max_tokens": 48, "extra_body": {"ignore_eos": True}}
    assert answer(hf, PROMPTS[0], **long) == answer(ours, PROMPTS[0], **long)


def test_system_message_and_conversation_render_alike(hf: openai.OpenAI, ours: openai.OpenAI) -> None:
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": PROMPTS[1]},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": PROMPTS[2]},
    ]
    results = [
        client.chat.completions.create(model=served(client), messages=conversation, **GREEDY)
        for client in (hf, ours)
    ]
    assert results[0].choices[0].message.content == results[1].choices[0].message.content
    assert results[0].usage == results[1].usage


def test_streaming_gives_the_same_text(hf: openai.OpenAI) -> None:
    whole = answer(hf, PROMPTS[3])
    stream = hf.chat.completions.create(
        model="hf-demo",
        messages=user(PROMPTS[3]),
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole[0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        whole[1]
    ]
    assert chunks[-1].usage.completion_tokens == whole[3]


def test_completions_equal_the_nanochat_backend(hf: openai.OpenAI, ours: openai.OpenAI) -> None:
    texts = [
        client.completions.create(
            model=served(client), prompt="Once upon a time", temperature=0, max_tokens=20
        )
        .choices[0]
        .text
        for client in (hf, ours)
    ]
    assert texts[0] == texts[1] and texts[0]


def test_concurrent_requests_are_batched_and_equal_sequential(hf: openai.OpenAI) -> None:
    sequential = [answer(hf, text) for text in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        concurrent = list(pool.map(lambda text: answer(hf, text), PROMPTS))
    assert concurrent == sequential


def test_the_same_limits_apply(hf: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        hf.chat.completions.create(model="hf-demo", messages=user("Hi"), max_tokens=5000)
    assert caught.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as caught:
        hf.chat.completions.create(model="hf-demo", messages=user("word " * 400), max_tokens=4)
    assert caught.value.code == "context_length_exceeded" and "256 tokens" in caught.value.body["message"]


def test_metrics_count_the_hf_generations(hf_url: str) -> None:
    text = httpx.get(f"{hf_url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("nanochat_generation_tokens_total", ())] > 0
    assert samples[("nanochat_ready", ())] == 1
    builds = [labels for (name, labels) in samples if name == "nanochat_build_info"]
    assert [dict(labels)["model"] for labels in builds] == ["hf-demo"]


def test_another_chat_template_builds_the_prompt(start_server, hf_demo: Path, tmp_path: Path) -> None:
    """A random Llama whose template's generation prompt is several tokens: the server's prompt is that
    template's, and its greedy tokens are transformers' own `generate`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(hf_demo)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|user_start|>{{ m['role'] }}: {{ m['content'] }}<|user_end|>"
        "{% endfor %}{% if add_generation_prompt %}<|assistant_start|>assistant says:{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.5,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    server = start_server(
        {"NANOCHAT_BACKEND": "hf", "NANOCHAT_CHECKPOINT": str(tmp_path / "llama"), **NO_CLASSIFIER}
    )

    messages = user("What is the longest river in the world?")
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    ids = list(prompt["input_ids"])
    with client_for(server.url) as client:
        done = client.chat.completions.create(
            model="llama", messages=messages, temperature=0, max_tokens=8, extra_body={"ignore_eos": True}
        )
    assert done.usage.prompt_tokens == len(ids)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    expected = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert done.choices[0].message.content == tokenizer.decode(expected[0, len(ids) :])


def test_a_folder_that_is_not_a_hf_model_is_a_clear_error(start_server) -> None:
    env = {"NANOCHAT_BACKEND": "hf", "NANOCHAT_CHECKPOINT": str(DEMO), **NO_CLASSIFIER}
    unready = start_server({**env, "NANOCHAT_ON_LOAD_FAILURE": "unready"}, wait="health")
    deadline = time.monotonic() + 60
    while (error := httpx.get(f"{unready.url}/ready").json()["error"])["code"] == "loading":
        assert time.monotonic() < deadline, unready.log()
        time.sleep(0.05)
    assert error.get("code") == "load_failed" and "not a Hugging Face model folder" in error["message"], error
    chat = httpx.post(f"{unready.url}/v1/chat/completions", json={"messages": user("Hi")}, timeout=120)
    assert chat.status_code == 503 and chat.json()["error"]["code"] == "load_failed"

    exits = start_server(env, wait=None)
    assert exits.wait(60) == 3
    (line,) = [json.loads(line) for line in exits.log().splitlines() if "failed to load" in line]
    assert line["severity"] == "ERROR" and "no config.json" in line["message"] and "stack_trace" not in line


@pytest.mark.parametrize("variable", ["MODEL_BACKEND", "NANOCHAT_BACKEND"])
def test_backend_settings(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "hf")
    assert Settings(_env_file=None).backend == "hf"
    monkeypatch.setenv(variable, "vllm")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)
    monkeypatch.setenv(variable, "hf")
    monkeypatch.setenv("NANOCHAT_STEP", "708")
    with pytest.raises(ValidationError, match="NANOCHAT_STEP"):
        Settings(_env_file=None)
