"""Prefix caching in the service: its flags and variables, its size within --memory-limit, and on a real
server its counters in /metrics and its figures in /stats moving when requests share a system prompt."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.lifecycle import load_engine, prefix_cache_budget
from nanochat.memory import MemoryPlan
from tests.app.test_serve_flags import parse
from tests.servers import DEMO_MODEL, Server

SYSTEM = (
    "You are a careful assistant for a small bakery. Answer in one short sentence, name the bread when you "
    "can, and never promise a delivery time."
)
QUESTIONS = ("What do you bake on Mondays?", "Is the rye bread sourdough?", "Do you sell croissants?")


def test_the_flags_and_variables(clean: pytest.MonkeyPatch) -> None:
    default = parse()
    assert default.enable_prefix_caching is True and default.prefix_cache_bytes == 0.5  # on by default
    assert parse("--enable-prefix-caching").enable_prefix_caching is True
    assert parse("--prefix-cache-bytes", "256MB").prefix_cache_bytes == 256_000_000
    assert parse("--prefix-cache-bytes", "0.25").prefix_cache_bytes == 0.25
    clean.setenv("NANOCHAT_ENABLE_PREFIX_CACHING", "true")
    clean.setenv("NANOCHAT_PREFIX_CACHE_BYTES", "1GiB")
    settings = parse()
    assert settings.enable_prefix_caching is True and settings.prefix_cache_bytes == 1024**3
    assert parse("--no-enable-prefix-caching").enable_prefix_caching is False
    for bad in ("0.0", "lots", "-1"):
        with pytest.raises(ValueError, match="--prefix-cache-bytes / NANOCHAT_PREFIX_CACHE_BYTES"):
            parse("--prefix-cache-bytes", bad)


def test_the_budget_is_a_fraction_or_a_size_within_the_memory_limit() -> None:
    plan = MemoryPlan(weights_bytes=1000, dtype=torch.float32, kv_cache_bytes=4000, rows=2, context=8)
    settings = Settings(_env_file=None, enable_prefix_caching=True, prefix_cache_bytes=0.5)
    assert prefix_cache_budget(settings, plan) == 2000
    assert prefix_cache_budget(settings.model_copy(update={"prefix_cache_bytes": 300}), plan) == 300
    assert prefix_cache_budget(settings.model_copy(update={"memory_limit": 5500}), plan) == 500
    assert prefix_cache_budget(settings.model_copy(update={"memory_limit": 4000}), plan) == 0
    assert prefix_cache_budget(settings.model_copy(update={"enable_prefix_caching": False}), plan) == 0


def test_the_engine_the_service_loads_has_the_cache_asked_for() -> None:
    settings = Settings(_env_file=None, checkpoint=str(DEMO_MODEL), max_batch=2, prefix_cache_bytes="1MB")
    assert load_engine(settings).prefix_cache_stats().max_bytes == 1_000_000  # on by default
    off = load_engine(settings.model_copy(update={"enable_prefix_caching": False}))
    assert off.prefix_cache_stats() is None


def prefix_figures(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("nanochat_prefix_cache_")
    }


@pytest.mark.integration
def test_requests_sharing_a_system_prompt_hit_the_cache(start_server: Callable[..., Server]) -> None:
    server = start_server({"NANOCHAT_CLASSIFIER": ""})  # prefix caching is on by default
    before = prefix_figures(server.url)
    assert set(before) >= {
        "nanochat_prefix_cache_hits_total",
        "nanochat_prefix_cache_misses_total",
        "nanochat_prefix_cache_reused_tokens_total",
        "nanochat_prefix_cache_evicted_blocks_total",
        "nanochat_prefix_cache_bytes",
        "nanochat_prefix_cache_limit_bytes",
    }
    for question in QUESTIONS:
        body = {
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": 4,
            "temperature": 0,
        }
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).status_code == 200
    after = prefix_figures(server.url)

    def grew(name: str) -> float:
        return after[name] - before[name]

    assert grew("nanochat_prefix_cache_hits_total") >= 2
    assert grew("nanochat_prefix_cache_reused_tokens_total") >= 2 * 16
    assert after["nanochat_prefix_cache_bytes"] > 0
    assert after["nanochat_prefix_cache_limit_bytes"] > after["nanochat_prefix_cache_bytes"]
    stats = httpx.get(f"{server.url}/stats", timeout=30).json()["scheduler"]["prefix_cache"]
    assert stats["hits"] >= grew("nanochat_prefix_cache_hits_total")
    assert stats["bytes"] == after["nanochat_prefix_cache_bytes"] and stats["block_size"] == 16
