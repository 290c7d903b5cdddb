"""The web chat page (`GET /`, app/static/) in a real headless Chromium against a real server.

It types a message, clicks Send and waits until the page marks the reply done; the reply must be
non-empty and must have grown in more than one step (a MutationObserver records every text the
assistant bubble showed). Error paths: an oversized message shows the server's JSON error text, and a
failed connection shows a message instead of failing silently.

The server is conftest's session-wide `base_url` (the demo model), or one with short replies for the
two-turn test. Needs Debian's `chromium` and `chromium-driver` (skips with the install command otherwise)
and selenium.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPLY_TIMEOUT_S = 300  # a whole reply on loaded cores: only bounds a hang
UI_TIMEOUT_S = 60  # a page update after a click: only bounds a hang
INSTALL = "apt-get install -y chromium chromium-driver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=900,760",
)

# Records every text the last assistant bubble showed (and whether Send was disabled at that moment), to
# prove the reply was rendered incrementally.
RECORD_UPDATES = """
window.__replyTexts = [];
window.__sendDisabled = [];
new MutationObserver(() => {
  const bubbles = document.querySelectorAll('.message.assistant .content');
  const text = bubbles.length ? bubbles[bubbles.length - 1].textContent : '';
  const seen = window.__replyTexts;
  if (text && seen[seen.length - 1] !== text) {
    seen.push(text);
    window.__sendDisabled.push(document.getElementById('send').disabled);
  }
}).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Debian Chromium driven by chromedriver (no browser download)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip(f"needs Chromium and chromedriver on PATH (Debian/Ubuntu: `{INSTALL}`)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        service = webdriver.ChromeService(executable_path=chromedriver)
        driver = webdriver.Chrome(service=service, options=options)
        try:
            yield driver
        finally:
            driver.quit()


def open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    loaded = 'return document.readyState === "complete"'
    WebDriverWait(driver, UI_TIMEOUT_S).until(lambda d: d.execute_script(loaded))
    driver.execute_script(RECORD_UPDATES)


def send_message(driver, text: str, *, type_it: bool = True) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "prompt")
    if type_it:
        box.send_keys(text)
    else:  # long text: set it at once (typing 40 000 characters takes minutes)
        driver.execute_script("arguments[0].value = arguments[1];", box, text)
    driver.find_element(By.ID, "send").click()


def wait_idle(driver, turns: int = 1) -> None:
    """Until the page shows `turns` user messages and has left the streaming state (Send enabled again)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, UI_TIMEOUT_S).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".message.user")) >= turns
    )
    WebDriverWait(driver, REPLY_TIMEOUT_S, poll_frequency=0.1).until(
        lambda d: d.find_element(By.ID, "app").get_attribute("data-state") == "idle"
    )


@pytest.fixture(scope="module")
def short_reply_url(start_server) -> str:
    """A demo-model server whose replies stop at 48 tokens: two turns then always fit the 256-token context.
    (With the default of 256, a long first reply leaves no room for the second turn's prompt, and the page
    rightly shows the server's 400 context_length_exceeded instead of a second reply.)"""
    return start_server({"NANOCHAT_DEFAULT_MAX_TOKENS": "48"}).url


def stored_key(driver) -> str | None:
    return driver.execute_script("return sessionStorage.getItem('nanochat.apiKey')")


def error_texts(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, ".message.error")]


def test_chat_reply_streams_into_the_page(short_reply_url: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, short_reply_url)
    assert browser.title == "nanochat"
    send_message(browser, "can you write a queue in Python?")
    wait_idle(browser)

    assert not error_texts(browser)
    reply = browser.find_element(By.CSS_SELECTOR, ".message.assistant")
    assert reply.get_attribute("data-state") == "done"
    text = reply.find_element(By.CLASS_NAME, "content").text
    assert text.strip()
    tokens = int(reply.get_attribute("data-tokens"))
    texts = browser.execute_script("return window.__replyTexts")
    assert tokens > 1 and len(texts) > 1, f"reply did not stream: {tokens} tokens, DOM texts {texts}"
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert all(browser.execute_script("return window.__sendDisabled")), "Send was enabled while streaming"
    assert browser.find_element(By.ID, "send").get_attribute("disabled") is None

    # a second turn goes out with the whole conversation, and New chat clears it
    send_message(browser, "and a stack?")
    wait_idle(browser, turns=2)
    assert not error_texts(browser)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant[data-state=done]")) == 2
    screenshot = tmp_path / "chat.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0
    browser.find_element(By.ID, "new-chat").click()
    assert not browser.find_elements(By.CSS_SELECTOR, ".message")


def test_server_error_is_shown(base_url: str, browser) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, base_url)
    oversized = "tell me more " * 4000  # beyond the server's per-message limit and the model's context
    send_message(browser, oversized, type_it=False)
    wait_idle(browser)
    error = browser.find_element(By.CSS_SELECTOR, ".message.error")
    assert error.text.startswith("Error 4"), error.text  # "Error 400: <the JSON error's message>"
    assert len(error.text) > len("Error 400: ")
    assert browser.find_element(By.CSS_SELECTOR, ".message.user").get_attribute("class").endswith("failed")
    assert not browser.find_elements(By.CSS_SELECTOR, ".message.assistant")
    # the text comes back for a retry
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == oversized.strip()


def test_unreachable_server_is_shown(base_url: str, browser) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, base_url)
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/chat/completions"]})
    try:
        send_message(browser, "hello?")
        wait_idle(browser)
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
    error = browser.find_element(By.CSS_SELECTOR, ".message.error")
    assert "Could not reach the server" in error.text


def test_api_key_is_asked_for_and_sent(start_server, browser) -> None:
    """A server with NANOCHAT_API_KEYS: the first send gets a 401 and opens the key dialog; with the key
    saved, the same message gets a streamed reply; Forget removes it again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = start_server({"NANOCHAT_API_KEYS": "page-key-1,page-key-2"})
    open_page(browser, server.url)
    send_message(browser, "hello there")
    wait_idle(browser)
    error = browser.find_element(By.CSS_SELECTOR, ".message.error")
    assert error.text.startswith("Error 401:") and "API key" in error.text, error.text
    dialog = browser.find_element(By.ID, "key-dialog")
    assert dialog.get_attribute("open") is not None, "the key dialog did not open on a 401"

    browser.find_element(By.ID, "key-input").send_keys("page-key-2")
    browser.find_element(By.ID, "key-save").click()
    assert dialog.get_attribute("open") is None
    # the dialog's "close" event, which saves the key, is dispatched as a task after the click returns
    WebDriverWait(browser, UI_TIMEOUT_S).until(lambda d: stored_key(d) == "page-key-2")
    WebDriverWait(browser, UI_TIMEOUT_S).until(lambda d: d.find_element(By.ID, "model").text)  # /v1/models

    browser.find_element(By.ID, "send").click()  # the failed text came back into the box
    WebDriverWait(browser, REPLY_TIMEOUT_S, poll_frequency=0.1).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".message.assistant[data-state=done]")
    )
    reply = browser.find_element(By.CSS_SELECTOR, ".message.assistant .content").text
    assert reply.strip()

    browser.find_element(By.ID, "api-key").click()
    browser.find_element(By.ID, "key-forget").click()
    WebDriverWait(browser, UI_TIMEOUT_S).until(lambda d: stored_key(d) is None)
