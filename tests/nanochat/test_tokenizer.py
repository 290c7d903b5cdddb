"""Tests for nanochat/tokenizer.py: the reference tokenizer against outputs of the public nanochat code, then
training, saving, round trips and every error a user can hit."""

from __future__ import annotations

import copy
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import tiktoken
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat import tokenizer as tokenizer_module
from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, TokenizerError

TRAINED_VOCAB_SIZE = 400
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "This license lets you copy, modify and distribute free software (c) 2007.",
    "Naïve café über straße — 你好世界 🦀🍕 12345!",
    "Don't worry, we'll see what they're typing: <|bos|> <|user_start|>",
)


@pytest.fixture(scope="module")
def ref_tokenizer_dir(reference_dir: Path) -> Path:
    return reference_dir / "tokenizer"


@pytest.fixture(scope="module")
def ref(ref_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_directory(ref_tokenizer_dir)


@pytest.fixture(scope="module")
def ref_expected(expected: dict) -> dict:
    return expected["tokenizer"]


def training_texts() -> list[str]:
    rng = random.Random(1234)
    words = [word for sentence in SENTENCES for word in sentence.split()]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + ".\n" for _ in range(3000)]


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train_from_iterator(iter(training_texts()), TRAINED_VOCAB_SIZE)


def structural_positions(ids: list[int], special_ids: set[int]) -> list[int]:
    return [position for position, token in enumerate(ids) if token in special_ids]


# --- the reference tokenizer, against expected.json -------------------------------------------------------


def test_reference_vocab_and_special_tokens(ref: Tokenizer, ref_expected: dict) -> None:
    assert ref.vocab_size == ref.get_vocab_size() == ref_expected["vocab_size"]
    assert ref.bos_token_id == ref.get_bos_token_id() == ref_expected["bos_token_id"]
    assert ref.get_special_tokens() == ref_expected["special_tokens"]
    assert list(SPECIAL_TOKENS) == list(ref_expected["special_tokens"])
    for name, token_id in ref_expected["special_tokens"].items():
        assert ref.encode_special(name) == token_id


def test_split_pattern_matches_reference_pickle(ref_tokenizer_dir: Path) -> None:
    encoding = pickle.loads((ref_tokenizer_dir / "tokenizer.pkl").read_bytes())
    assert encoding._pat_str == SPLIT_PATTERN


def test_reference_strings(ref: Tokenizer, ref_expected: dict) -> None:
    for case in ref_expected["strings"]:
        text = case["text"]
        assert ref.encode(text) == case["ids"], text
        assert ref.encode(text, prepend="<|bos|>") == case["ids_prepend_bos"], text
        assert ref.encode(text, prepend=ref_expected["bos_token_id"]) == case["ids_prepend_bos"], text
        assert (
            ref.encode(text, prepend="<|bos|>", append="<|assistant_end|>")
            == case["ids_prepend_bos_append_assistant_end"]
        ), text
        assert [ref.id_to_token_bytes(i).hex() for i in case["ids"]] == case["token_bytes_hex"], text
        assert (ref.decode(case["ids"]) == text) is case["decode_roundtrip_equal"], text


def test_reference_batch_encode(ref: Tokenizer, ref_expected: dict) -> None:
    texts = [case["text"] for case in ref_expected["strings"]]
    assert ref.encode(texts, prepend="<|bos|>", num_threads=2) == ref_expected["batch_encode_prepend_bos"]


@pytest.mark.parametrize(
    ("conversation_key", "rendered_key"),
    [
        ("conversation", "render_conversation"),
        ("conversation_tool", "render_conversation_tool"),  # system merge + python / python_output parts
    ],
)
def test_reference_render_conversation(
    ref: Tokenizer, ref_expected: dict, conversation_key: str, rendered_key: str
) -> None:
    conversation = ref_expected[conversation_key]
    before = copy.deepcopy(conversation)
    ids, mask = ref.render_conversation(conversation)
    assert ids == ref_expected[rendered_key]["ids"]
    assert mask == ref_expected[rendered_key]["mask"]
    assert conversation == before  # the system merge works on a copy


def test_reference_render_for_completion(ref: Tokenizer, ref_expected: dict) -> None:
    assert ref.render_for_completion(ref_expected["conversation"]) == ref_expected["render_for_completion"]


def test_render_conversation_truncates_ids_and_mask(ref: Tokenizer, ref_expected: dict) -> None:
    ids, mask = ref.render_conversation(ref_expected["conversation"], max_tokens=15)
    assert ids == ref_expected["render_conversation"]["ids"][:15]
    assert mask == ref_expected["render_conversation"]["mask"][:15]


def test_computed_token_bytes_equal_reference_file(ref_tokenizer_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.pkl").write_bytes((ref_tokenizer_dir / "tokenizer.pkl").read_bytes())
    computed = Tokenizer.from_directory(tmp_path).token_bytes  # no token_bytes.pt: computed from the encoding
    reference = torch.load(ref_tokenizer_dir / "token_bytes.pt", weights_only=True)
    assert computed.dtype == reference.dtype == torch.int32
    assert torch.equal(computed, reference)


def test_save_reproduces_reference_files(ref: Tokenizer, ref_tokenizer_dir: Path, tmp_path: Path) -> None:
    ref.save(tmp_path)
    assert (tmp_path / "tokenizer.pkl").read_bytes() == (ref_tokenizer_dir / "tokenizer.pkl").read_bytes()
    saved = torch.load(tmp_path / "token_bytes.pt", weights_only=True)
    assert torch.equal(saved, torch.load(ref_tokenizer_dir / "token_bytes.pt", weights_only=True))
    with (
        zipfile.ZipFile(tmp_path / "token_bytes.pt") as ours,
        zipfile.ZipFile(ref_tokenizer_dir / "token_bytes.pt") as theirs,
    ):
        assert sorted(ours.namelist()) == sorted(theirs.namelist())


# --- special-token text typed by a user stays plain text --------------------------------------------------


def test_special_token_text_is_plain_in_encode(ref: Tokenizer) -> None:
    text = "look: " + " ".join(SPECIAL_TOKENS) + "".join(SPECIAL_TOKENS)
    ids = ref.encode(text)
    assert not set(ids) & set(ref.get_special_tokens().values())
    assert ref.decode(ids) == text


def test_special_token_text_is_plain_in_render(ref: Tokenizer) -> None:
    text = "".join(SPECIAL_TOKENS)
    conversation = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]}
    ids, _ = ref.render_conversation(conversation)
    special = ref.get_special_tokens()
    positions = structural_positions(ids, set(special.values()))
    assert [ids[p] for p in positions] == [
        special[name]
        for name in ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>")
    ]
    n = len(ref.encode(text))  # bos, user_start, n ids, user_end, assistant_start, n ids, assistant_end
    assert positions == [0, 1, 2 + n, 3 + n, 4 + 2 * n]


# --- round trips ------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_reference_round_trip(ref: Tokenizer, text: str) -> None:
    assert ref.decode(ref.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_trained_round_trip(trained: Tokenizer, text: str) -> None:
    assert trained.decode(trained.encode(text)) == text


# --- training and saving ----------------------------------------------------------------------------------


def test_trained_tokenizer_layout(trained: Tokenizer) -> None:
    assert trained.vocab_size == TRAINED_VOCAB_SIZE
    first_special = TRAINED_VOCAB_SIZE - len(SPECIAL_TOKENS)
    assert trained.get_special_tokens() == {name: first_special + i for i, name in enumerate(SPECIAL_TOKENS)}
    assert trained.bos_token_id == first_special
    # Byte tokens keep rank = byte value; the merges compress the training text.
    assert [trained.id_to_token_bytes(i) for i in range(256)] == [bytes([i]) for i in range(256)]
    sample = training_texts()[0]
    assert len(trained.encode(sample)) < len(sample.encode("utf-8")) / 2


def test_save_and_load_trained(trained: Tokenizer, tmp_path: Path) -> None:
    folder = trained.save(tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["token_bytes.pt", "tokenizer.pkl"]  # no temp files
    loaded = Tokenizer.from_directory(folder)
    texts = [*training_texts()[:20], "unseen words: zebra Ωμέγα 🚀", ""]
    assert loaded.encode(texts) == trained.encode(texts)
    assert loaded.get_special_tokens() == trained.get_special_tokens()
    encoding = pickle.loads((folder / "tokenizer.pkl").read_bytes())
    assert isinstance(encoding, tiktoken.Encoding)
    assert encoding.name == "rustbpe"
    assert encoding._pat_str == SPLIT_PATTERN


def test_saved_token_bytes_follow_the_rule(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path)
    saved = torch.load(tmp_path / "token_bytes.pt", weights_only=True)
    assert saved.dtype == torch.int32
    assert saved.shape == (TRAINED_VOCAB_SIZE,)
    special_ids = set(trained.get_special_tokens().values())
    rule = [
        0
        if i in special_ids
        else len(trained.id_to_token_bytes(i).decode("utf-8", errors="replace").encode())
        for i in range(TRAINED_VOCAB_SIZE)
    ]
    assert saved.tolist() == rule
    assert saved[:128].tolist() == [1] * 128
    assert saved[128:256].tolist() == [3] * 128
    assert torch.equal(Tokenizer.from_directory(tmp_path).token_bytes, saved)


def test_failed_save_keeps_previous_file(
    trained: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained.save(tmp_path)
    before = (tmp_path / "token_bytes.pt").read_bytes()

    def crash(obj: object, f) -> None:
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer_module.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        trained.save(tmp_path)
    assert (tmp_path / "token_bytes.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token_bytes.pt", "tokenizer.pkl"]


# --- errors -----------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"directory not found.*nope"):
        Tokenizer.from_directory(tmp_path / "nope")


def test_missing_pkl(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.pkl not found"):
        Tokenizer.from_directory(tmp_path)


def test_garbage_pkl(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.pkl").write_bytes(b"this is not a pickle")
    with pytest.raises(TokenizerError, match=r"tokenizer\.pkl is not a readable pickle"):
        Tokenizer.from_directory(tmp_path)


def test_pkl_of_wrong_type(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps({"mergeable_ranks": {}}))
    with pytest.raises(TokenizerError, match="holds a dict, not a tiktoken Encoding"):
        Tokenizer.from_directory(tmp_path)


def test_pkl_without_special_tokens(tmp_path: Path) -> None:
    encoding = tiktoken.Encoding(
        name="bytes",
        pat_str=SPLIT_PATTERN,
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|bos|>": 256},
    )
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps(encoding))
    with pytest.raises(TokenizerError, match=r"tokenizer\.pkl lacks the special tokens \['<\|user_start\|>'"):
        Tokenizer.from_directory(tmp_path)


def test_bad_token_bytes_file(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path)
    (tmp_path / "token_bytes.pt").write_bytes(b"garbage")
    with pytest.raises(TokenizerError, match=r"token_bytes\.pt is not a readable tensor file"):
        Tokenizer.from_directory(tmp_path)
    torch.save(torch.zeros(7, dtype=torch.int32), tmp_path / "token_bytes.pt")
    with pytest.raises(
        TokenizerError, match=rf"holds \(7,\), expected a tensor of shape \({TRAINED_VOCAB_SIZE},\)"
    ):
        Tokenizer.from_directory(tmp_path)


def test_vocab_size_too_small() -> None:
    with pytest.raises(TokenizerError, match="vocab_size must be an int >= 265"):
        Tokenizer.train_from_iterator(["some text"], 264)


def test_training_texts_must_be_str() -> None:
    with pytest.raises(TokenizerError, match="training texts must be str"):
        Tokenizer.train_from_iterator([b"bytes"], 300)


def test_unknown_special_name(trained: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match=r"unknown special token '<\|eos\|>'"):
        trained.encode_special("<|eos|>")
    with pytest.raises(TokenizerError, match="unknown special token"):
        trained.encode("hi", append="<|eos|>")


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["ok", 3]])
def test_encode_rejects_non_text(trained: Tokenizer, bad: object) -> None:
    with pytest.raises(TokenizerError, match="encode expects a str or a list of str"):
        trained.encode(bad)


@pytest.mark.parametrize("bad", [-1, TRAINED_VOCAB_SIZE, True, 1.5])
def test_encode_rejects_bad_prepend_id(trained: Tokenizer, bad: object) -> None:
    with pytest.raises(
        TokenizerError, match=rf"prepend/append must be a token id in \[0, {TRAINED_VOCAB_SIZE}\)"
    ):
        trained.encode("hi", prepend=bad)


def test_decode_and_token_bytes_reject_unknown_ids(trained: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match=f"vocabulary size {TRAINED_VOCAB_SIZE}"):
        trained.decode([1, 5000])
    with pytest.raises(TokenizerError, match="token id 5000 is not in the vocabulary"):
        trained.id_to_token_bytes(5000)


def user(text: object) -> dict:
    return {"role": "user", "content": text}


def assistant(content: object) -> dict:
    return {"role": "assistant", "content": content}


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "at least one message"),
        ([assistant("hi")], "message 0 has role 'assistant' where 'user' was expected"),
        ([user("a"), user("b")], "message 1 has role 'user' where 'assistant' was expected"),
        (
            [user("a"), {"role": "system", "content": "s"}],
            "message 1 has role 'system'.*only allowed first",
        ),
        (
            [{"role": "system", "content": "s"}],
            "message 0 is a system message; it must be followed by a user",
        ),
        (
            [{"role": "system", "content": "s"}, user("a"), user("b")],
            "message 2 has role 'user' where 'assistant' was expected",
        ),
        ([user("a"), {"role": "assistant"}], "message 1 must be a dict with 'role' and 'content'"),
        ([user(["not", "a", "str"])], "message 0: user content must be a str, got list"),
        ([user("a"), assistant(7)], "message 1: assistant content must be a str or a list of parts"),
        (
            [user("a"), assistant([{"type": "image", "text": "x"}])],
            "message 1, part 0: unknown part type 'image'",
        ),
        ([user("a"), assistant([{"type": "text", "text": 3}])], "message 1, part 0: 'text' must be a str"),
    ],
)
def test_bad_conversations(trained: Tokenizer, messages: list, match: str) -> None:
    with pytest.raises(TokenizerError, match=match):
        trained.render_conversation({"messages": messages})


def test_conversation_must_be_a_messages_dict(trained: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match='"messages"'):
        trained.render_conversation([user("a")])


def test_render_for_completion_needs_a_final_assistant_message(trained: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match=r"message 0 has role 'user'.*end with the assistant message"):
        trained.render_for_completion({"messages": [user("a")]})


def test_bad_max_tokens(trained: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match="max_tokens must be a positive int"):
        trained.render_conversation({"messages": [user("a")]}, max_tokens=0)
