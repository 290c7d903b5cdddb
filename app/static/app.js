// The chat page's behaviour: send the conversation to POST chat/completions (the nanochat web protocol),
// read the Server-Sent Events reply with fetch + ReadableStream, and render it token by token.
//
// Contract with the server: request {"messages": [{"role", "content"}, ...]}; reply SSE lines
// `data: {"token": "<text>", ...}` and finally `data: {"done": true}`; errors before the stream starts are
// JSON {"error": {"message", "type", "param", "code"}} with an HTTP status (400, 429, 503, ...), and an
// error during the stream is a `data: {"error": {...}}` line. Model output is only ever set as text
// (textContent), never parsed as HTML. The conversation lives here, in `history`; the server keeps none.
"use strict";

const CHAT_URL = "chat/completions"; // relative, so the page works behind any host or path prefix
const MODELS_URL = "v1/models";

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
const KEY_STORAGE = "nanochat.apiKey"; // sessionStorage: the key lives as long as this tab

let history = []; // [{role, content}] of completed turns
let inFlight = null; // AbortController of the reply being streamed

class ChatError extends Error {}

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

function showError(message) {
  const item = addMessage("error", message);
  item.setAttribute("role", "alert");
}

function scrollToEnd(force) {
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  if (force || nearBottom) list.scrollTop = list.scrollHeight;
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
  try {
    const body = await response.json();
    if (typeof body?.error?.message === "string") message = body.error.message;
    else if (typeof body?.detail === "string") message = body.detail;
  } catch {
    // not JSON: keep the status text
  }
  const sentence = /[.!?]$/.test(message) ? message : `${message}.`;
  const retryAfter = response.headers.get("Retry-After");
  const retry = retryAfter ? ` Try again in ${retryAfter} s.` : "";
  return new ChatError(`Error ${response.status}: ${sentence}${retry}`);
}

// Streams the assistant's reply to `messages`; calls onToken(text) per token; resolves to the full text.
async function streamReply(messages, onToken, signal) {
  let response;
  try {
    response = await fetch(CHAT_URL, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
      body: JSON.stringify({ messages }),
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
      if (data === "[DONE]") return reply;
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
      if (event.done) return reply;
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
  const controller = new AbortController();
  inFlight = controller;
  setBusy(true);
  try {
    const reply = await streamReply(
      turn,
      (token) => {
        tokens += 1;
        assistantItem.classList.remove("pending");
        assistantItem.dataset.tokens = String(tokens);
        content.textContent += token;
        scrollToEnd(false);
      },
      controller.signal,
    );
    history = [...turn, { role: "assistant", content: reply }];
    assistantItem.classList.remove("pending");
    assistantItem.dataset.state = "done";
    if (!reply) content.textContent = "(empty reply)";
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
  for (const item of list.querySelectorAll(".message")) item.remove();
  emptyHint.hidden = false;
  setBusy(false);
  prompt.focus();
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
fitPrompt();
prompt.focus();
