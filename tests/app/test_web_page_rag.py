"""The web chat with retrieval and with a conversation longer than the model's context, against real servers:
nanochat's web protocol (`POST /chat/completions`) with `retrieval` (citations and supports with `done`,
the same as `/v1/chat/completions` computes; bad input a JSON error before the stream; without it, the
events as before), and the page (app/static/) in a real headless Chromium: "Answer from the docs" lists
the reply's sources; a conversation past the demo model's 256 tokens is sent again without its oldest turns,
with a notice on the reply.

The index is built here from the repository's README.md and docs/, as in test_api_rag.py. The browser and
the page helpers are test_web_page.py's (Debian's `chromium` and `chromium-driver`, selenium).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from nanochat.rag.index import build_index
from tests.app.test_api_rag import (
    ROLLBACK,
    assert_error,
    echo_servers,  # noqa: F401 (a fixture: two servers whose one source holds, or not, the greedy reply)
    wait_for_rag,
)
from tests.app.test_web_page import (
    REPLY_TIMEOUT_S,
    UI_TIMEOUT_S,
    browser,  # noqa: F401 (a fixture)
    error_texts,
    open_page,
    send_message,
    wait_idle,
)

if TYPE_CHECKING:
    from tests.servers import Server

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
RELEASE_RUNBOOK = "docs/runbooks/release.md"
# about 140 tokens each: one fits the 256-token context with room for a reply, two never do
LONG = [
    "tell me more about queues " * 20,
    "and now tell me about stacks " * 18,
    "what about heaps then " * 23,
]


@pytest.fixture(scope="module")
def rag_url(start_server: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A demo-model server with the docs index; replies stop at 48 tokens (short, and the sources then get
    more of the context than a quarter of it)."""
    index = tmp_path_factory.mktemp("web-rag") / "docs-index"
    build_index([REPO_ROOT / "README.md", REPO_ROOT / "docs"], index)
    server = start_server({"NANOCHAT_RAG_INDEXES": f"docs={index}", "NANOCHAT_DEFAULT_MAX_TOKENS": "48"})
    wait_for_rag(server.url)
    return server.url


@pytest.fixture(scope="module")
def http(rag_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=rag_url, timeout=REPLY_TIMEOUT_S) as c:
        yield c


def web_events(http: httpx.Client, body: dict) -> list[dict]:
    with http.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line]


# ---- the route -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attribute", [False, True])
def test_web_chat_with_retrieval_ends_with_citations(http: httpx.Client, attribute: bool) -> None:
    """The web route answers as the OpenAI route does with the same retrieval: the same reply (greedy), with
    the markers when `attribute`; its citations and supports in the done event."""
    ask = {"messages": [{"role": "user", "content": ROLLBACK}], "temperature": 0, "max_tokens": 24}
    retrieval = {"index": "docs", "k": 3, "attribute": attribute}
    events = web_events(http, {**ask, "retrieval": retrieval})
    *tokens, done = events
    assert tokens and all(set(e) == {"token", "gpu"} for e in tokens), tokens
    assert set(done) == {"done", "citations", "supports"} and done["done"] is True, done
    citations = done["citations"]
    assert citations[0]["source"] == RELEASE_RUNBOOK, citations
    assert [c["index"] for c in citations] == list(range(1, len(citations) + 1))
    assert all("Rolling back" in c["heading"] for c in citations if c["source"] == RELEASE_RUNBOOK)

    openai_route = http.post("/v1/chat/completions", json={**ask, "retrieval": retrieval}).json()
    assert "".join(e["token"] for e in tokens) == openai_route["choices"][0]["message"]["content"]
    assert citations == openai_route["citations"]
    assert done["supports"] == openai_route["supports"]


def test_attribute_marks_the_web_reply_where_its_source_says_the_same(echo_servers: dict) -> None:  # noqa: F811
    """On a server whose source holds the model's greedy reply (test_api_rag.py's `echo_servers`), the
    web reply's sentences are supported: watched, it goes out as generated; with `attribute`, with the
    markers the OpenAI route writes."""
    answer, ask = echo_servers["answer"], echo_servers["ask"]
    with httpx.Client(base_url=echo_servers["echo"].url, timeout=REPLY_TIMEOUT_S) as http:
        for attribute in (False, True):
            body = {**ask, "retrieval": {"k": 1, "attribute": attribute}}
            *tokens, done = web_events(http, body)
            openai_route = http.post("/v1/chat/completions", json=body).json()
            text = "".join(e["token"] for e in tokens)
            assert text == openai_route["choices"][0]["message"]["content"]
            assert done["supports"] and done["supports"] == openai_route["supports"]
            assert done["citations"] == openai_route["citations"]
            if attribute:
                assert text.count("[1]") == len(done["supports"]) + answer.count("[1]"), text
            else:
                assert text == answer


@pytest.mark.parametrize(
    ("retrieval", "status", "code", "param"),
    [
        ({"index": "nope"}, 404, "index_not_found", "retrieval.index"),
        ({"k": 0}, 400, "invalid_value", "retrieval.k"),
        ({"mode": "psychic"}, 400, None, "retrieval.mode"),
        ("docs", 400, None, "retrieval"),
    ],
)
def test_bad_retrieval_is_an_error_before_the_stream(
    http: httpx.Client, retrieval: object, status: int, code: str | None, param: str
) -> None:
    body = {"messages": [{"role": "user", "content": ROLLBACK}], "retrieval": retrieval}
    response = http.post("/chat/completions", json=body)
    assert response.headers["content-type"].startswith("application/json")
    error = assert_error(response, status, code or response.json()["error"]["code"], param)
    assert "Traceback" not in error["message"]


def test_without_retrieval_the_events_are_as_before(http: httpx.Client) -> None:
    events = web_events(http, {"messages": [{"role": "user", "content": ROLLBACK}], "max_tokens": 8})
    assert events[-1] == {"done": True}
    assert events[:-1] and all(set(e) == {"token", "gpu"} and e["gpu"] == 0 for e in events[:-1])


# ---- the page --------------------------------------------------------------------------------------------
def assistant_replies(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, ".message.assistant[data-state=done]")


def test_answer_from_the_docs_lists_the_sources(rag_url: str, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, rag_url)
    option = browser.find_element(By.ID, "docs-option")
    WebDriverWait(browser, UI_TIMEOUT_S).until(lambda d: option.is_displayed())  # after GET stats
    assert option.text.strip() == "Answer from the docs"
    checkbox = browser.find_element(By.ID, "use-docs")
    assert not checkbox.is_selected()  # off by default
    checkbox.send_keys(Keys.SPACE)  # the keyboard ticks it
    assert checkbox.is_selected()

    send_message(browser, ROLLBACK)
    wait_idle(browser)
    assert not error_texts(browser)
    [reply] = assistant_replies(browser)
    sources = reply.find_element(By.CSS_SELECTOR, ".sources")
    assert sources.get_attribute("aria-label") == "Sources"
    lines = [line.text for line in sources.find_elements(By.CSS_SELECTOR, "li")]
    assert lines and lines[0].startswith(f"[1] {RELEASE_RUNBOOK} — "), lines
    assert "Rolling back" in lines[0]
    assert [line.split(" ")[0] for line in lines] == [f"[{n}]" for n in range(1, len(lines) + 1)]

    # unticked: a plain reply, no sources
    checkbox.send_keys(Keys.SPACE)
    send_message(browser, "thanks")
    wait_idle(browser, turns=2)
    assert not error_texts(browser)
    assert not assistant_replies(browser)[1].find_elements(By.CSS_SELECTOR, ".sources")


def test_no_docs_option_without_an_index(base_url: str, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, base_url)
    WebDriverWait(browser, UI_TIMEOUT_S).until(lambda d: d.find_element(By.ID, "model").text)  # probes done
    assert not browser.find_element(By.ID, "docs-option").is_displayed()


def test_a_long_conversation_leaves_out_its_oldest_turns(rag_url: str, browser) -> None:  # noqa: F811
    """Two long messages never fit the 256-token context together: the second is sent again without the
    first turn, and its reply says so; the third, without the first two; the page still shows them all.
    A message too long on its own is the server's error, as before."""
    from selenium.webdriver.common.by import By

    tokens = [
        httpx.post(f"{rag_url}/tokenize", json={"prompt": text}, timeout=UI_TIMEOUT_S).json()["count"]
        for text in LONG
    ]
    assert all(130 <= count <= 180 for count in tokens), tokens  # the premise: one fits, two do not

    open_page(browser, rag_url)
    for turn, text in enumerate(LONG, start=1):
        send_message(browser, text.strip(), type_it=False)
        wait_idle(browser, turns=turn)
        assert not error_texts(browser), error_texts(browser)
        assert len(assistant_replies(browser)) == turn
    replies = assistant_replies(browser)
    notices = [[n.text for n in reply.find_elements(By.CSS_SELECTOR, ".notice")] for reply in replies]
    assert notices == [
        [],
        ["2 earlier messages were left out to fit the model's context"],
        ["4 earlier messages were left out to fit the model's context"],
    ]
    assert len(browser.find_elements(By.CSS_SELECTOR, ".message.user")) == 3  # the history is all shown

    too_long = "tell me more " * 120  # about 360 tokens: not even alone
    send_message(browser, too_long.strip(), type_it=False)
    wait_idle(browser, turns=4)
    [error] = error_texts(browser)
    assert error.startswith("Error 400:") and "context is 256 tokens" in error, error
    assert len(assistant_replies(browser)) == 3
