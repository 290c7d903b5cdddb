"""Tokenizer: nanochat's BPE tokenizer files, encoding, and the chat format.

Contract:
- Loads and writes the exact files nanochat's `scripts/tok_train.py` writes: `tokenizer.pkl` (a pickled
  `tiktoken.Encoding`, protocol 4) and `token_bytes.pt` (int32 tensor [vocab] with the UTF-8 length of each
  decoded token, 0 for special tokens). Trains new ones with the PyPI `rustbpe` package.
- `encode` treats every string as plain text: special-token text typed by a user ("<|bos|>") is split like
  any other text. Special ids enter only through `prepend`/`append`, `encode_special` and the renderers.
- `render_conversation` / `render_for_completion` reproduce nanochat's chat format token for token,
  including the training mask (1 only on what the assistant writes itself).

It deliberately does not: sample, stream or batch for a model (the engine does), fetch tokenizers from the
network, or guard against malicious files. `tokenizer.pkl` is a pickle and unpickling runs code, so only
load tokenizers you trust.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import rustbpe
import tiktoken
import torch

from nanochat.files import write_atomically

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",  # every document and conversation starts with it
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # the assistant calls the python tool
    "<|python_end|>",
    "<|output_start|>",  # the tool's output, written back into the assistant turn
    "<|output_end|>",
)
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""  # noqa: E501
TOKENIZER_FILE = "tokenizer.pkl"
TOKEN_BYTES_FILE = "token_bytes.pt"
ASSISTANT_PART_TYPES = ("text", "python", "python_output")


class TokenizerError(ValueError):
    """A tokenizer file, argument or conversation that cannot be used; the message says what to fix."""


class Tokenizer:
    """A nanochat tokenizer: a tiktoken `Encoding` with the 9 special tokens, plus the chat format."""

    def __init__(
        self, encoding: tiktoken.Encoding, token_bytes: torch.Tensor | None = None, source: str = "encoding"
    ) -> None:
        missing = [name for name in SPECIAL_TOKENS if name not in encoding.special_tokens_set]
        if missing:
            raise TokenizerError(
                f"{source} lacks the special tokens {missing}; it is not a nanochat tokenizer"
            )
        if token_bytes is not None and (
            not isinstance(token_bytes, torch.Tensor) or tuple(token_bytes.shape) != (encoding.n_vocab,)
        ):
            shape = tuple(token_bytes.shape) if isinstance(token_bytes, torch.Tensor) else type(token_bytes)
            raise TokenizerError(
                f"{TOKEN_BYTES_FILE} for {source} holds {shape}, expected a tensor of shape "
                f"({encoding.n_vocab},); delete it to have it recomputed"
            )
        self._encoding = encoding
        self._special_ids = {name: encoding.encode_single_token(name) for name in SPECIAL_TOKENS}
        self._token_bytes = token_bytes

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load `tokenizer.pkl` and, if present, `token_bytes.pt` from a folder.

        Unpickling runs code: only load tokenizers you trust.
        """
        directory = Path(path)
        if not directory.is_dir():
            raise TokenizerError(f"tokenizer directory not found (or not a directory): {directory}")
        pkl_path = directory / TOKENIZER_FILE
        if not pkl_path.is_file():
            raise TokenizerError(
                f"{pkl_path} not found; a tokenizer folder needs the {TOKENIZER_FILE} written by nanochat's "
                "tok_train.py or Tokenizer.save"
            )
        try:
            with pkl_path.open("rb") as f:
                encoding = pickle.load(f)
        except Exception as exc:  # unpickling can fail in many ways; all mean "not a usable tokenizer.pkl"
            raise TokenizerError(
                f"{pkl_path} is not a readable pickle ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(encoding, tiktoken.Encoding):
            raise TokenizerError(f"{pkl_path} holds a {type(encoding).__name__}, not a tiktoken Encoding")
        token_bytes = None
        token_bytes_path = directory / TOKEN_BYTES_FILE
        if token_bytes_path.is_file():
            try:
                token_bytes = torch.load(token_bytes_path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise TokenizerError(
                    f"{token_bytes_path} is not a readable tensor file ({type(exc).__name__}: {exc}); "
                    "delete it to have it recomputed"
                ) from exc
        return cls(encoding, token_bytes, source=str(pkl_path))

    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Train a BPE tokenizer with rustbpe on `texts`, with the 9 special tokens as the last ids.

        `vocab_size` is an upper bound: on too little text rustbpe runs out of pairs to merge and stops early.
        """
        min_vocab_size = 256 + len(SPECIAL_TOKENS)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < min_vocab_size:
            raise TokenizerError(
                f"vocab_size must be an int >= {min_vocab_size} (256 byte tokens + {len(SPECIAL_TOKENS)} "
                f"special tokens), got {vocab_size!r}"
            )
        bpe = rustbpe.Tokenizer()
        try:
            bpe.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
        except TypeError as exc:
            raise TokenizerError(f"training texts must be str: {exc}") from exc
        ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
        special_tokens = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        encoding = tiktoken.Encoding(
            name="rustbpe", pat_str=bpe.get_pattern(), mergeable_ranks=ranks, special_tokens=special_tokens
        )
        return cls(encoding)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `tokenizer.pkl` and `token_bytes.pt` in nanochat's format; returns the folder.

        Each file is written to a temporary name and then renamed, so a crash never leaves a half file.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / TOKENIZER_FILE, lambda f: pickle.dump(self._encoding, f, protocol=4))
        # Through a file object, as nanochat does, so the zip's root folder is "archive".
        write_atomically(folder / TOKEN_BYTES_FILE, lambda f: torch.save(self.token_bytes, f))
        return folder

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    def get_vocab_size(self) -> int:
        return self.vocab_size

    def get_special_tokens(self) -> dict[str, int]:
        """Special-token name -> id, in SPECIAL_TOKENS order."""
        return dict(self._special_ids)

    @property
    def bos_token_id(self) -> int:
        return self._special_ids["<|bos|>"]

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode_special(self, name: str) -> int:
        """The id of a special token, e.g. encode_special("<|assistant_end|>")."""
        try:
            return self._special_ids[name]
        except (KeyError, TypeError):
            raise TokenizerError(f"unknown special token {name!r}; known: {list(SPECIAL_TOKENS)}") from None

    @property
    def token_bytes(self) -> torch.Tensor:
        """int32 [vocab]: UTF-8 length of each decoded token (errors="replace"), 0 for special tokens."""
        if self._token_bytes is None:
            special_ids = set(self._special_ids.values())
            lengths = [
                0 if i in special_ids else len(self._encoding.decode([i]).encode("utf-8"))
                for i in range(self.vocab_size)
            ]
            self._token_bytes = torch.tensor(lengths, dtype=torch.int32)
        return self._token_bytes

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The tiktoken encoding itself (grammar libraries build their vocabulary from it)."""
        return self._encoding

    def id_to_token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (may be part of a UTF-8 character), for streaming detokenization."""
        try:
            return self._encoding.decode_single_token_bytes(token_id)
        except (KeyError, TypeError):
            raise TokenizerError(
                f"token id {token_id!r} is not in the vocabulary of {self.vocab_size}"
            ) from None

    def encode(
        self,
        text: str | list[str],
        prepend: int | str | None = None,
        append: int | str | None = None,
        num_threads: int = 8,
    ) -> list[int] | list[list[int]]:
        """Encode a str (-> ids) or a list of str (-> one id list each) as plain text.

        `prepend` / `append` add one token, given as an id or a special-token name, to each result.
        """
        prefix = [] if prepend is None else [self._token_id(prepend)]
        suffix = [] if append is None else [self._token_id(append)]
        if isinstance(text, str):
            return prefix + self._encoding.encode_ordinary(text) + suffix
        if isinstance(text, list) and all(isinstance(item, str) for item in text):
            rows = self._encoding.encode_ordinary_batch(text, num_threads=num_threads)
            return [prefix + row + suffix for row in rows]
        raise TokenizerError(f"encode expects a str or a list of str, got {type(text).__name__}")

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text; invalid UTF-8 (e.g. a cut-off character) becomes U+FFFD."""
        try:
            return self._encoding.decode(list(ids))
        except (KeyError, TypeError, OverflowError) as exc:
            raise TokenizerError(f"cannot decode ids: {exc} (vocabulary size {self.vocab_size})") from None

    def render_conversation(
        self, conversation: Mapping[str, Any], max_tokens: int = 2048
    ) -> tuple[list[int], list[int]]:
        """A {"messages": [...]} conversation -> (ids, mask), both cut to `max_tokens`.

        mask is 1 on the tokens the assistant produces (its text, python calls and <|assistant_end|>) and 0
        on everything else (bos, user turns, <|assistant_start|>, tool output). A leading system message is
        merged into the first user message as system + "\\n\\n" + user. The input is not modified.
        """
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise TokenizerError(f"max_tokens must be a positive int, got {max_tokens!r}")
        special = self._special_ids
        ids: list[int] = []
        mask: list[int] = []

        def add(token_ids: list[int], mask_value: int) -> None:
            ids.extend(token_ids)
            mask.extend([mask_value] * len(token_ids))

        add([self.bos_token_id], 0)
        for index, role, content in _chat_turns(conversation):
            if role == "user":
                if not isinstance(content, str):
                    raise TokenizerError(
                        f"message {index}: user content must be a str, got {type(content).__name__}"
                    )
                add([special["<|user_start|>"], *self.encode(content), special["<|user_end|>"]], 0)
                continue
            add([special["<|assistant_start|>"]], 0)
            if isinstance(content, str):
                add(self.encode(content), 1)
            elif isinstance(content, list):
                for part_type, text in _assistant_parts(content, index):
                    body = self.encode(text)
                    if part_type == "text":
                        add(body, 1)
                    elif part_type == "python":
                        add([special["<|python_start|>"], *body, special["<|python_end|>"]], 1)
                    else:
                        add([special["<|output_start|>"], *body, special["<|output_end|>"]], 0)
            else:
                raise TokenizerError(
                    f"message {index}: assistant content must be a str or a list of parts, "
                    f"got {type(content).__name__}"
                )
            add([special["<|assistant_end|>"]], 1)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: Mapping[str, Any]) -> list[int]:
        """Prompt ids for the model to write the last assistant message: that message is dropped, the rest
        rendered (cut to 2048 tokens, as in nanochat) and <|assistant_start|> appended.
        """
        messages = _messages(conversation)
        last = messages[-1]
        if not isinstance(last, Mapping) or last.get("role") != "assistant":
            role = last.get("role") if isinstance(last, Mapping) else None
            raise TokenizerError(
                f"message {len(messages) - 1} has role {role!r}; render_for_completion expects the "
                "conversation to end with the assistant message it replaces"
            )
        ids, _ = self.render_conversation({**conversation, "messages": messages[:-1]})
        return [*ids, self._special_ids["<|assistant_start|>"]]

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt ids for the assistant's answer to `messages` (ending with the user's turn): the whole
        conversation, not cut at 2048 tokens (the caller checks the context), then <|assistant_start|>.
        Messages ending with an assistant turn (e.g. one whose last part is a tool's output) are continued:
        the prompt ends inside that turn, without its <|assistant_end|>."""
        ids, _ = self.render_conversation({"messages": messages}, max_tokens=2**62)
        if _messages({"messages": messages})[-1].get("role") == "assistant":
            return ids[:-1]  # render_conversation closes every assistant turn with <|assistant_end|>
        return [*ids, self._special_ids["<|assistant_start|>"]]

    def _token_id(self, token: int | str) -> int:
        """A prepend/append argument (an id or a special-token name) -> id."""
        if isinstance(token, str):
            return self.encode_special(token)
        if isinstance(token, int) and not isinstance(token, bool) and 0 <= token < self.vocab_size:
            return token
        raise TokenizerError(
            f"prepend/append must be a token id in [0, {self.vocab_size}) or a special-token name, "
            f"got {token!r}"
        )


def _messages(conversation: Mapping[str, Any]) -> list[Any]:
    """The non-empty message list of a {"messages": [...]} conversation."""
    messages = conversation.get("messages") if isinstance(conversation, Mapping) else None
    if not isinstance(messages, list) or not messages:
        raise TokenizerError('a conversation must be a dict {"messages": [...]} with at least one message')
    return messages


def _chat_turns(conversation: Mapping[str, Any]) -> list[tuple[int, str, Any]]:
    """(message index, role, content) per turn, roles checked, a leading system message merged into the
    first user message. The index is the one in the input, for error messages."""
    messages = _messages(conversation)
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise TokenizerError(f"message {index} must be a dict with 'role' and 'content'")
    turns = [(index, message["role"], message["content"]) for index, message in enumerate(messages)]
    if turns[0][1] == "system":
        if len(turns) < 2 or turns[1][1] != "user":
            raise TokenizerError("message 0 is a system message; it must be followed by a user message")
        system, user = turns[0][2], turns[1][2]
        if not isinstance(system, str) or not isinstance(user, str):
            raise TokenizerError("messages 0 (system) and 1 (user) must have str content to be merged")
        turns = [(1, "user", system + "\n\n" + user), *turns[2:]]
    for position, (index, role, _) in enumerate(turns):
        expected_role = "user" if position % 2 == 0 else "assistant"
        if role != expected_role:
            hint = "; a system message is only allowed first" if role == "system" else ""
            raise TokenizerError(
                f"message {index} has role {role!r} where {expected_role!r} was expected: roles must "
                f"alternate user/assistant, starting with user{hint}"
            )
    return turns


def _assistant_parts(parts: list[Any], index: int) -> list[tuple[str, str]]:
    """(type, text) for each part of an assistant message, checked."""
    checked = []
    for part_index, part in enumerate(parts):
        part_type = part.get("type") if isinstance(part, Mapping) else None
        text = part.get("text") if isinstance(part, Mapping) else None
        if part_type not in ASSISTANT_PART_TYPES:
            raise TokenizerError(
                f"message {index}, part {part_index}: unknown part type {part_type!r}; "
                f"expected one of {list(ASSISTANT_PART_TYPES)}"
            )
        if not isinstance(text, str):
            raise TokenizerError(f"message {index}, part {part_index}: 'text' must be a str")
        checked.append((part_type, text))
    return checked
