"""OpenAPI-driven fuzzing of the running service with schemathesis.

Every operation in the server's own `/openapi.json` gets generated requests, valid and invalid (bounded:
`MAX_EXAMPLES` per operation). Two properties must hold for all of them: no 5xx response
(`not_a_server_error`), and every error response is the service's one JSON error shape
`{"error": {"message", "type", "param", "code"}}`. The server runs with tiny token limits so valid
generation requests stay cheap; what is fuzzed is the HTTP surface, not the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (pip install schemathesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the skip: schemathesis brings it)
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from tests.servers import wait_for_part  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_EXAMPLES = 100
ERROR_FIELDS = {"message", "type", "param", "code"}
# cheap generations: the fuzzer sends hundreds of valid requests
SERVER_ENV = {
    "NANOCHAT_MAX_TOKENS_LIMIT": "16",
    "NANOCHAT_DEFAULT_MAX_TOKENS": "8",
    "NANOCHAT_REQUEST_TIMEOUT_S": "30",
    "NANOCHAT_ACCEPT_ANY_MODEL": "true",  # random `model` strings would stop at the 404 before the rest
}


@pytest.fixture(scope="module")
def fuzz_server_url(start_server, tmp_path_factory) -> str:
    """The demo model with tiny token limits (`start_server`), ready, its classifier too (it loads after
    /ready: a fuzzed /v1/classify before then gets the 503 `loading` that test_lazy_parts.py checks), and a
    small retrieval index (README.md) for /v1/retrieve, /v1/embeddings and chat's `retrieval`."""
    from nanochat.rag.index import build_index

    index = tmp_path_factory.mktemp("fuzz-rag") / "index"
    build_index([Path(__file__).resolve().parents[2] / "README.md"], index)
    url = start_server({**SERVER_ENV, "NANOCHAT_RAG_INDEXES": f"docs={index}"}).url
    assert wait_for_part(url, "classifier")["state"] == "ready"
    assert wait_for_part(url, "rag")["state"] == "ready"
    return url


def error_shape(ctx, response, case) -> None:
    """A schemathesis check: every 4xx/5xx body is {"error": {"message", "type", "param", "code"}}."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.text[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{response.status_code} body has no error object: {body!r}"
    missing = ERROR_FIELDS - set(error)
    assert not missing, f"{response.status_code} error object lacks {sorted(missing)}: {body!r}"
    assert isinstance(error["message"], str) and error["message"], f"empty error message: {body!r}"


# Hypothesis is driven directly, one operation after another, rather than through `schema.parametrize()`:
# the schema only exists once the server fixture runs, and schemathesis' fixture-based loader
# (`schemathesis.pytest.from_fixture`) does not work with pytest 9.
def test_api_never_fails_with_5xx_and_errors_have_one_shape(fuzz_server_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server_url}/openapi.json")
    failures: dict[str, str] = {}
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()  # raises on an operation the schema cannot describe: that is a failure too
        labels.append(operation.label)
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(cases)
        def fuzz(case) -> None:
            case.call_and_validate(checks=[not_a_server_error, error_shape], timeout=60)

        try:
            fuzz()
        except Exception as e:  # schemathesis' failure groups carry the request and a curl line
            failures[operation.label] = f"{type(e).__name__}: {e}"
    assert "POST /v1/chat/completions" in labels and "POST /chat/completions" in labels, labels
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
