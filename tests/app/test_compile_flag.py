"""`--compile` / NANOCHAT_COMPILE and `--dtype auto` in the service's settings, and the engine the service
loads with --compile: its decode step compiled at load (before /ready), not on a request."""

from __future__ import annotations

import pytest
import torch

from app.config import Settings
from app.lifecycle import load_engine
from nanochat.device import cpu_has_bf16_matmul
from tests.app.test_serve_flags import parse
from tests.servers import DEMO_MODEL


def test_the_flag_and_the_variable(clean: pytest.MonkeyPatch) -> None:
    assert parse().compile is False
    assert parse("--compile").compile is True
    assert parse("--dtype", "auto").dtype == "auto"
    clean.setenv("NANOCHAT_COMPILE", "1")
    assert parse().compile is True
    assert parse("--no-compile").compile is False


@pytest.mark.slow
def test_the_engine_the_service_loads_is_compiled_at_load() -> None:
    settings = Settings(_env_file=None, checkpoint=str(DEMO_MODEL), max_batch=1, compile=True, dtype="auto")
    engine = load_engine(settings)
    assert engine.compiled is not None and engine.compiled.failed is None and engine.compiled.buckets == (1,)
    expected = torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32
    assert next(engine.model.parameters()).dtype == expected
    assert load_engine(settings.model_copy(update={"compile": False})).compiled is None
