// The chat page's behaviour: send the conversation to POST chat/completions (the nanochat web protocol),
// read the Server-Sent Events reply with fetch + ReadableStream, and render it token by token.
//
// Contract with the server: request {"messages": [{"role", "content"}, ...]}; reply SSE lines
// `data: {"token": "<text>", ...}` and finally `data: {"done": true}`; errors before the stream starts are
// JSON {"error": {"message", "type", "param", "code"}} with an HTTP status (400, 429, 503, ...), and an
// error during the stream is a `data: {"error": {...}}` line. Model output is only ever set as text
// (textContent), never parsed as HTML. The conversation lives here, in `history`; the server keeps none.
//
// Where the server has a retrieval index (GET stats: `parts.rag`), "Answer from the docs" adds
// {"retrieval": {"attribute": true}} to the request; the last event then carries `citations`, listed
// under the reply as its sources. A conversation longer than the model's context (400
// context_length_exceeded) is sent again without its oldest user/assistant pair, until it fits or only
// the new message is left; the page keeps showing all of it, and notes on the reply what was left out.
"use strict";

const CHAT_URL = "chat/completions"; // relative, so the page works behind any host or path prefix
const MODELS_URL = "v1/models";
const STATS_URL = "stats"; // `parts.rag`: whether this server can answer from its docs
const TOO_LONG = "context_length_exceeded"; // the error code of a conversation the model cannot take

const app = document.getElementById("app");
const list = document.getElementById("messages");
const emptyHint = document.getElementById("empty");
const form = document.getElementById("composer");
const prompt = document.getElementById("prompt");
const sendButton = document.getElementById("send");
const newChatButton = document.getElementById("new-chat");
const keyButton = document.getElementById("api-key");
const keyDialog = document.getElementById("key-dialog");
const keyInput = document.getElementById("key-input");
const docsOption = document.getElementById("docs-option");
const useDocs = document.getElementById("use-docs");
const KEY_STORAGE = "nanochat.apiKey"; // sessionStorage: the key lives as long as this tab

let history = []; // [{role, content}] of completed turns
let inFlight = null; // AbortController of the reply being streamed
let leftOut = 0; // how many of history's oldest messages the last reply was sent without

class ChatError extends Error {
  constructor(message, code = null) {
    super(message);
    this.code = code; // the JSON error's `code`, when the server sent one
  }
}

// ---- rendering -----------------------------------------------------------------------------------------
function addMessage(kind, text) {
  emptyHint.hidden = true;
  const item = document.createElement("div");
  item.className = `message ${kind}`;
  const body = document.createElement("div");
  body.className = "content";
  body.textContent = text;
  item.append(body);
  list.append(item);
  scrollToEnd(true);
  return item;
}

// The reply's sources, one line each: "[n] source — heading".
function showSources(item, citations) {
  const box = document.createElement("section");
  box.className = "sources";
  box.setAttribute("aria-label", "Sources");
  const title = document.createElement("p");
  title.className = "sources-title";
  title.textContent = "Sources";
  const lines = document.createElement("ol");
  for (const citation of citations) {
    const line = document.createElement("li");
    const heading = citation.heading ? ` — ${citation.heading}` : "";
    line.textContent = `[${citation.index}] ${citation.source}${heading}`;
    lines.append(line);
  }
  if (!citations.length) {
    const none = document.createElement("li");
    none.textContent = "none found";
    lines.append(none);
  }
  box.append(title, lines);
  item.append(box);
}

function showLeftOut(item, count) {
  const notice = document.createElement("p");
  notice.className = "notice";
  notice.textContent = `${count} earlier messages were left out to fit the model's context`;
  item.append(notice);
}

function showError(message) {
  const item = addMessage("error", message);
  item.setAttribute("role", "alert");
}

function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function scrollToEnd(force) {
  if (force || nearBottom()) list.scrollTop = list.scrollHeight;
}

function setBusy(busy) {
  app.dataset.state = busy ? "streaming" : "idle";
  sendButton.disabled = busy;
}

// Grow the box with its text (up to the CSS max-height); border-box sizing, so add the borders back.
function fitPrompt() {
  prompt.style.height = "auto";
  const borders = prompt.offsetHeight - prompt.clientHeight;
  prompt.style.height = `${prompt.scrollHeight + borders}px`;
}

// ---- the API key (servers started with NANOCHAT_API_KEYS answer 401 without one) -----------------------
function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function askForKey() {
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  if (!keyDialog.open) keyDialog.showModal();
  keyInput.focus();
}

keyDialog.addEventListener("close", () => {
  if (keyDialog.returnValue === "save" && keyInput.value.trim()) {
    sessionStorage.setItem(KEY_STORAGE, keyInput.value.trim());
  } else if (keyDialog.returnValue === "forget") {
    sessionStorage.removeItem(KEY_STORAGE);
  }
  keyInput.value = "";
  keyButton.classList.toggle("has-key", Boolean(sessionStorage.getItem(KEY_STORAGE)));
  showModelName();
  showDocsOption();
  prompt.focus();
});

// ---- the protocol --------------------------------------------------------------------------------------
// Returns a function that takes the next chunk of the body and returns the `data` of each complete event.
function sseParser() {
  let buffer = "";
  let data = [];
  return (chunk) => {
    buffer += chunk;
    const lines = buffer.split("\n");
    buffer = lines.pop(); // the last piece is an unfinished line
    const events = [];
    for (const raw of lines) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (line === "") {
        if (data.length) events.push(data.join("\n"));
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      } // comments (":") and the id/event/retry fields carry nothing this page needs
    }
    return events;
  };
}

async function errorFromResponse(response) {
  let message = response.statusText || "request failed";
  let code = null;
  try {
    const body = await response.json();
    if (typeof body?.error?.message === "string") message = body.error.message;
    else if (typeof body?.detail === "string") message = body.detail;
    if (typeof body?.error?.code === "string") code = body.error.code;
  } catch {
    // not JSON: keep the status text
  }
  const sentence = /[.!?]$/.test(message) ? message : `${message}.`;
  const retryAfter = response.headers.get("Retry-After");
  const retry = retryAfter ? ` Try again in ${retryAfter} s.` : "";
  return new ChatError(`Error ${response.status}: ${sentence}${retry}`, code);
}

// Streams the assistant's reply to `messages` (with `retrieval`, when not null); calls onToken(text) per
// token; resolves to {text, citations (null without retrieval), truncated (messages the server dropped)}.
async function streamReply(messages, retrieval, onToken, signal) {
  let response;
  try {
    response = await fetch(CHAT_URL, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
      body: JSON.stringify(retrieval ? { messages, retrieval } : { messages }),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ChatError("Could not reach the server. Check that it is running and try again.");
  }
  if (response.status === 401) {
    const error = await errorFromResponse(response);
    askForKey();
    throw new ChatError(`${error.message} Enter the API key and send again.`);
  }
  if (!response.ok) throw await errorFromResponse(response);
  // a server run with NANOCHAT_CONTEXT_OVERFLOW=truncate drops the oldest turns itself, and says so
  const truncated = Number(response.headers.get("X-Prompt-Truncated")) || 0;

  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parse = sseParser();
  let reply = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ChatError("The connection was lost before the reply was complete.");
    }
    if (chunk.done) break;
    for (const data of parse(chunk.value)) {
      if (data === "[DONE]") return { text: reply, citations: null, truncated };
      let event;
      try {
        event = JSON.parse(data);
      } catch {
        continue; // not ours; ignore rather than fail the whole reply
      }
      if (event.error) throw new ChatError(`Error: ${event.error.message ?? "the server stopped the reply"}`);
      if (typeof event.token === "string") {
        reply += event.token;
        onToken(event.token);
      }
      if (event.done) {
        const citations = Array.isArray(event.citations) ? event.citations : null;
        return { text: reply, citations, truncated };
      }
    }
  }
  throw new ChatError("The reply was cut off: the server closed the connection early.");
}

// ---- the conversation ----------------------------------------------------------------------------------
async function send(text) {
  const userItem = addMessage("user", text);
  const assistantItem = addMessage("assistant pending", "");
  const content = assistantItem.querySelector(".content");
  let tokens = 0;
  const turn = [...history, { role: "user", content: text }];
  const retrieval = !docsOption.hidden && useDocs.checked ? { attribute: true } : null;
  const controller = new AbortController();
  inFlight = controller;
  setBusy(true);
  let skipped = Math.min(leftOut, turn.length - 1); // the last reply needed these left out: so does this one
  const onToken = (token) => {
    tokens += 1;
    assistantItem.classList.remove("pending");
    assistantItem.dataset.tokens = String(tokens);
    content.textContent += token;
    scrollToEnd(false);
  };
  try {
    let reply;
    for (;;) {
      try {
        reply = await streamReply(turn.slice(skipped), retrieval, onToken, controller.signal);
        break;
      } catch (err) {
        // too long: once more without the oldest user/assistant pair, while there is one to leave out
        if (!(err instanceof ChatError && err.code === TOO_LONG) || turn.length - skipped < 3) throw err;
        skipped += 2;
      }
    }
    leftOut = skipped;
    history = [...turn, { role: "assistant", content: reply.text }];
    assistantItem.classList.remove("pending");
    assistantItem.dataset.state = "done";
    if (!reply.text) content.textContent = "(empty reply)";
    const follow = nearBottom(); // before the lines below make the page taller
    if (skipped + reply.truncated) showLeftOut(assistantItem, skipped + reply.truncated);
    if (reply.citations) showSources(assistantItem, reply.citations);
    scrollToEnd(follow);
  } catch (err) {
    if (controller.signal.aborted) return; // "New chat" cancelled it; nothing to report
    // the turn failed: it stays out of the history and its text goes back into the box for a retry
    userItem.classList.add("failed");
    if (tokens === 0) assistantItem.remove();
    else assistantItem.classList.add("partial");
    if (!prompt.value) {
      prompt.value = text;
      fitPrompt();
    }
    showError(err instanceof ChatError ? err.message : `Unexpected error: ${err.message}`);
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      setBusy(false);
    }
  }
}

function newChat() {
  inFlight?.abort();
  inFlight = null;
  history = [];
  leftOut = 0;
  for (const item of list.querySelectorAll(".message")) item.remove();
  emptyHint.hidden = false;
  setBusy(false);
  prompt.focus();
}

// Offers "Answer from the docs" where the server has a retrieval index that did not fail to load.
async function showDocsOption() {
  try {
    const response = await fetch(STATS_URL, { headers: authHeaders() });
    const rag = (await response.json())?.parts?.rag;
    docsOption.hidden = !(response.ok && rag && rag.state !== "failed");
  } catch {
    docsOption.hidden = true; // the plain chat works without it
  }
}

async function showModelName() {
  try {
    const response = await fetch(MODELS_URL, { headers: authHeaders() });
    const body = await response.json();
    const id = body?.data?.[0]?.id;
    if (typeof id === "string") document.getElementById("model").textContent = id;
  } catch {
    // the name is a nicety; the chat works without it
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = prompt.value.trim();
  if (!text || inFlight) return;
  prompt.value = "";
  fitPrompt();
  send(text);
});

prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

prompt.addEventListener("input", fitPrompt);
newChatButton.addEventListener("click", newChat);
keyButton.addEventListener("click", askForKey);
keyButton.classList.toggle("has-key", Boolean(sessionStorage.getItem(KEY_STORAGE)));

showModelName();
showDocsOption();
fitPrompt();
prompt.focus();
