"""The terminal chat's loop, shared by `nanochat chat` on a checkpoint and on a running server (`--url`).

It reads the user's lines, keeps the conversation (an optional system message, then user and assistant
turns) and knows the commands: `/reset` (or `clear`) starts a new conversation, `/quit` (or `quit`, `exit`,
Ctrl-D, Ctrl-C at the prompt) leaves. How a reply is made is the caller's `respond`; this module knows
nothing of models or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable

RESET_COMMANDS = ("/reset", "clear")
QUIT_COMMANDS = ("/quit", "quit", "exit")
HINT = "Type /reset to start a new conversation, /quit or Ctrl-D to leave."

Message = dict[str, str]
# respond(messages) writes the reply to the conversation, whose last message is the user's, and returns its
# text; or None when the turn failed (having said why on stderr): the turn is dropped and the chat goes on
Respond = Callable[[list[Message]], str | None]


def chat_loop(respond: Respond, system: str | None = None) -> int:
    """Chat until the user leaves; the exit status (0)."""
    start: list[Message] = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    print(HINT)
    while True:
        try:
            text = input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text in QUIT_COMMANDS:
            return 0
        if text in RESET_COMMANDS:
            messages = list(start)
            print("New conversation.")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        reply = respond(messages)
        if reply is None:
            messages.pop()
        else:
            messages.append({"role": "assistant", "content": reply})
