"""TokenDataLoader on real parquet shards and the real tokenizer: the token stream against one computed
here from the documents, exact resume at every kind of cut, DDP striding, the end of the data, errors."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.data.shards import read_row_group, write_shards
from nanochat.tokenizer import Tokenizer
from nanochat.train import dataloader as dataloader_module
from nanochat.train.dataloader import DataLoaderError, LoaderState, TokenDataLoader

DOCS_PER_SHARD = 7
DOCS_PER_ROW_GROUP = 2  # so each full shard has 4 row groups (2, 2, 2 and 1 documents), the last one 1


def make_documents() -> list[str]:
    """Unique documents of very different lengths (one far longer than a batch), unicode included."""
    rng = random.Random(7)
    words = ["the", "quick", "brown", "fox", "model", "token", "café", "你好", "🦀", "12345", "naïve"]
    docs = [f"doc {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(0, 25))) for i in range(30)]
    docs[4] = "x"
    docs[11] = "long " + " ".join(rng.choice(words) for _ in range(200))
    docs[17] = "ünïcödé — 日本語のテキスト\n\tand 🦀🦀 emoji"
    return docs


@pytest.fixture(scope="module")
def documents() -> list[str]:
    return make_documents()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, documents) -> list[Path]:
    # "" and whitespace-only documents are dropped by write_shards; the layout below assumes the 30 kept.
    with_blanks = [*documents[:9], "", "  \n ", *documents[9:]]
    paths = write_shards(with_blanks, tmp_path_factory.mktemp("shards"), DOCS_PER_SHARD, DOCS_PER_ROW_GROUP)
    assert len(paths) == 5  # 7 + 7 + 7 + 7 + 2 documents
    return paths


def layout(documents: list[str]) -> list[list[list[str]]]:
    """documents per [shard][row group], as write_shards is documented to lay them out."""
    by_shard = [documents[i : i + DOCS_PER_SHARD] for i in range(0, len(documents), DOCS_PER_SHARD)]
    return [
        [docs[j : j + DOCS_PER_ROW_GROUP] for j in range(0, len(docs), DOCS_PER_ROW_GROUP)]
        for docs in by_shard
    ]


def rank_documents(documents: list[str], rank: int, world_size: int) -> list[tuple[int, int, int, str]]:
    """(shard, row group, document in the row group, text) that rank reads in one epoch, in order."""
    return [
        (s, g, d, text)
        for s, groups in enumerate(layout(documents))
        for g, texts in enumerate(groups)
        if g % world_size == rank
        for d, text in enumerate(texts)
    ]


def doc_tokens(tokenizer: Tokenizer, text: str) -> list[int]:
    return [tokenizer.get_bos_token_id(), *tokenizer.encode(text)]


def epoch_stream(tokenizer: Tokenizer, documents: list[str], rank: int = 0, world_size: int = 1) -> list[int]:
    return [
        t for *_, text in rank_documents(documents, rank, world_size) for t in doc_tokens(tokenizer, text)
    ]


def batch_tokens(inputs: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """The B·T + 1 stream tokens a batch was cut from (after checking targets are inputs shifted by one)."""
    flat_in, flat_out = inputs.flatten().tolist(), targets.flatten().tolist()
    assert flat_in[1:] == flat_out[:-1]
    return [*flat_in, flat_out[-1]]


def read_stream(loader: TokenDataLoader, num_batches: int) -> list[int]:
    tokens: list[int] = []
    for _ in range(num_batches):
        batch = loader.next_batch()
        assert batch is not None
        tokens += batch_tokens(*batch)
    return tokens


def smallest_divisor(n: int) -> int:
    return next(d for d in range(2, n + 1) if n % d == 0)


def test_batches_are_consecutive_windows_of_the_document_stream(shards, documents, small_tokenizer):
    B, T = 2, 8
    expected = epoch_stream(small_tokenizer, documents)
    assert len(expected) > 3 * (B * T + 1)
    loader = TokenDataLoader(shards, small_tokenizer, B, T)
    assert loader.state_dict() == {"shard": 0, "row_group": 0, "doc": 0, "offset": 0, "epoch": 0}
    stream = expected * 3  # looping repeats the epoch
    num_batches = 2 * len(expected) // (B * T + 1) + 1
    for k in range(num_batches):
        inputs, targets = loader.next_batch()
        window = torch.tensor(stream[k * (B * T + 1) : (k + 1) * (B * T + 1)])
        assert inputs.dtype == targets.dtype == torch.long
        assert inputs.shape == targets.shape == (B, T)
        assert torch.equal(inputs, window[:-1].view(B, T))
        assert torch.equal(targets, window[1:].view(B, T))
    assert loader.state_dict()["epoch"] == 2


def test_stream_decodes_back_to_the_documents(shards, documents, small_tokenizer):
    bos = small_tokenizer.get_bos_token_id()
    loader = TokenDataLoader(shards, small_tokenizer, 1, 15, loop=False)
    stream = [t for batch in loader for t in batch_tokens(*batch)]
    assert stream[0] == bos
    segments = [stream[i:j] for i, j in _bos_segments(stream, bos)]
    # Whole documents in order; the last one, cut by the end of the final batch, is a prefix.
    assert [small_tokenizer.decode(ids) for ids in segments[:-1]] == documents[: len(segments) - 1]
    last = small_tokenizer.encode(documents[len(segments) - 1])
    assert 0 < len(segments[-1]) <= len(last) and last[: len(segments[-1])] == segments[-1]


def test_empty_document_in_a_shard_is_a_lone_bos(tmp_path, small_tokenizer):
    # write_shards skips blank documents, but shards from elsewhere may hold them.
    path = tmp_path / "shard_00000.parquet"
    pq.write_table(pa.table({"text": ["alpha beta", "", "gamma"]}), path, row_group_size=2)
    loader = TokenDataLoader([path], small_tokenizer, 1, 3, loop=False)
    stream = [t for batch in loader for t in batch_tokens(*batch)]
    expected = doc_tokens(small_tokenizer, "alpha beta") + doc_tokens(small_tokenizer, "")
    expected += doc_tokens(small_tokenizer, "gamma")
    assert doc_tokens(small_tokenizer, "") == [small_tokenizer.get_bos_token_id()]
    assert stream == expected[: len(expected) // 4 * 4]


def test_loop_false_ends_with_none_and_stays_ended(shards, documents, small_tokenizer):
    B, T = 3, 5
    expected = epoch_stream(small_tokenizer, documents)
    loader = TokenDataLoader(shards, small_tokenizer, B, T, loop=False)
    batches = list(loader)
    assert len(batches) == len(expected) // (B * T + 1)
    assert [t for batch in batches for t in batch_tokens(*batch)] == expected[: len(batches) * (B * T + 1)]
    assert loader.next_batch() is None
    assert loader.next_batch() is None


def test_loop_true_wraps_and_counts_epochs(shards, documents, small_tokenizer):
    expected = epoch_stream(small_tokenizer, documents)
    loader = TokenDataLoader(shards, small_tokenizer, 1, 1)  # 2 tokens a batch
    stream: list[int] = []
    while len(stream) < 2 * len(expected) + 10:
        stream += batch_tokens(*loader.next_batch())
        # The state names the first unused token (at an epoch's exact end it may name either side).
        if len(stream) % len(expected):
            assert loader.state_dict()["epoch"] == len(stream) // len(expected)
    assert stream == (expected * 3)[: len(stream)]


def cut_positions(tokenizer: Tokenizer, documents: list[str], rank: int, world_size: int) -> dict:
    """Stream positions (tokens used before the cut) of each kind of cut, with the state expected there
    (None where more than one state names the same position)."""
    starts = []  # (shard, row group, doc, start position, length)
    position = 0
    for s, g, d, text in rank_documents(documents, rank, world_size):
        length = len(doc_tokens(tokenizer, text))
        starts.append((s, g, d, position, length))
        position += length
    epoch_length = position
    long_doc = max(starts, key=lambda item: item[4])
    s, g, d, start, length = long_doc
    assert length > 20
    row_group_start = next(x for x in starts if x[0] == 1 and x[1] > rank and x[2] == 0)
    shard_start = next(x for x in starts if x[0] == 2)
    return {
        "mid_document": (start + 13, {"shard": s, "row_group": g, "doc": d, "offset": 13, "epoch": 0}),
        "row_group_boundary": (
            row_group_start[3],
            {"shard": 1, "row_group": row_group_start[1], "doc": 0, "offset": 0, "epoch": 0},
        ),
        "shard_boundary": (shard_start[3], None),
        "epoch_end": (epoch_length, None),
        "after_epoch_wrap": (
            epoch_length + start + 2,
            {"shard": s, "row_group": g, "doc": d, "offset": 2, "epoch": 1},
        ),
    }


@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
@pytest.mark.parametrize(
    "cut", ["mid_document", "row_group_boundary", "shard_boundary", "epoch_end", "after_epoch_wrap"]
)
@pytest.mark.parametrize("through_json", [False, True])
def test_resume_continues_with_exactly_the_same_batches(
    shards, documents, small_tokenizer, cut, rank, world_size, through_json
):
    position, expected_state = cut_positions(small_tokenizer, documents, rank, world_size)[cut]
    # One sequence per batch of T + 1 tokens, T + 1 dividing the position, so a batch ends exactly there.
    T = smallest_divisor(position) - 1
    before, after = position // (T + 1), 2 * len(epoch_stream(small_tokenizer, documents)) // (T + 1) + 2

    def loader(state=None) -> TokenDataLoader:
        return TokenDataLoader(shards, small_tokenizer, 1, T, rank=rank, world_size=world_size, state=state)

    uninterrupted = loader()
    read_stream(uninterrupted, before)
    state = uninterrupted.state_dict()
    if expected_state is not None:
        assert state == expected_state
    if through_json:
        state = json.loads(json.dumps(state))
    resumed = loader(state)
    assert resumed.state_dict() == state
    for _ in range(after):
        expected_inputs, expected_targets = uninterrupted.next_batch()
        inputs, targets = resumed.next_batch()
        assert torch.equal(inputs, expected_inputs)
        assert torch.equal(targets, expected_targets)
        assert resumed.state_dict() == uninterrupted.state_dict()


def test_resume_from_a_loader_state_object(shards, small_tokenizer):
    uninterrupted = TokenDataLoader(shards, small_tokenizer, 2, 7)
    read_stream(uninterrupted, 5)
    resumed = TokenDataLoader(
        shards, small_tokenizer, 2, 7, state=LoaderState(**uninterrupted.state_dict()), loop=False
    )
    assert read_stream(resumed, 20) == read_stream(uninterrupted, 20)


def test_ddp_ranks_read_strided_row_groups_and_share_out_every_document(
    shards, documents, small_tokenizer, monkeypatch
):
    reads: list[tuple[str, int]] = []

    def recording_read_row_group(path, index):
        reads.append((Path(path).name, index))
        return read_row_group(path, index)

    monkeypatch.setattr(dataloader_module, "read_row_group", recording_read_row_group)
    bos = small_tokenizer.get_bos_token_id()
    per_rank_epoch: list[list[str]] = []
    for rank in (0, 1):
        reads.clear()
        expected = epoch_stream(small_tokenizer, documents, rank, 2)
        loader = TokenDataLoader(shards, small_tokenizer, 1, 4, rank=rank, world_size=2)
        stream = read_stream(loader, 2 * len(expected) // 5 + 1)
        assert stream == (expected * 3)[: len(stream)]
        assert reads and all(index % 2 == rank for _, index in reads)
        assert {index for name, index in reads if name == "shard_00000.parquet"} == {rank, rank + 2}
        # The last shard has a single row group: only rank 0 reads it.
        assert any(name == "shard_00004.parquet" for name, _ in reads) == (rank == 0)

        # From the stream alone: its documents, up to the first one it reads a second time (the wrap).
        texts = [small_tokenizer.decode(stream[i:j]) for i, j in _bos_segments(stream, bos)]
        first_epoch = texts[: texts.index(texts[0], 1)]
        per_rank_epoch.append(first_epoch)
    assert not set(per_rank_epoch[0]) & set(per_rank_epoch[1])
    assert Counter(per_rank_epoch[0] + per_rank_epoch[1]) == Counter(documents)


def _bos_segments(stream: list[int], bos: int) -> list[tuple[int, int]]:
    """[start, end) of each document in the stream (each starts at a bos); the last may be cut short."""
    starts = [i for i, t in enumerate(stream) if t == bos]
    return [(i + 1, j) for i, j in zip(starts, [*starts[1:], len(stream)], strict=True)]


def test_rank_resume_state_keeps_its_stride(shards, small_tokenizer):
    loader = TokenDataLoader(shards, small_tokenizer, 1, 9, rank=1, world_size=2)
    for _ in range(30):
        loader.next_batch()
        assert loader.state_dict()["row_group"] % 2 == 1


def test_constructor_errors(shards, small_tokenizer):
    with pytest.raises(DataLoaderError, match="no shards to read"):
        TokenDataLoader([], small_tokenizer, 1, 4)
    with pytest.raises(DataLoaderError, match="must be >= 1, got 0, 4"):
        TokenDataLoader(shards, small_tokenizer, 0, 4)
    with pytest.raises(DataLoaderError, match="must be >= 1, got 2, 0"):
        TokenDataLoader(shards, small_tokenizer, 2, 0)
    with pytest.raises(DataLoaderError, match="rank 2 is outside world size 2"):
        TokenDataLoader(shards, small_tokenizer, 1, 4, rank=2, world_size=2)
    with pytest.raises(DataLoaderError, match="rank -1 is outside world size 1"):
        TokenDataLoader(shards, small_tokenizer, 1, 4, rank=-1)


@pytest.mark.parametrize(
    "state, rank, world_size",
    [
        ({"shard": 5, "row_group": 0, "doc": 0, "offset": 0, "epoch": 0}, 0, 1),  # 5 shards: 0..4
        ({"shard": 0, "row_group": 1, "doc": 0, "offset": 0, "epoch": 0}, 0, 2),  # rank 1's row group
        ({"shard": 0, "row_group": 2, "doc": 0, "offset": 0, "epoch": 0}, 1, 2),
        ({"shard": 0, "row_group": 1, "doc": 0, "offset": 0, "epoch": 0}, 0, 3),  # saved with another world
    ],
)
def test_state_that_does_not_fit_the_data_is_refused(shards, small_tokenizer, state, rank, world_size):
    with pytest.raises(DataLoaderError, match="does not fit 5 shards read by rank"):
        TokenDataLoader(shards, small_tokenizer, 1, 4, rank=rank, world_size=world_size, state=state)


@pytest.mark.parametrize("key", ["shard", "row_group", "doc", "offset", "epoch"])
def test_negative_state_values_are_refused(shards, small_tokenizer, key):
    # A negative index would silently read from the end (the last shard, the last document, ...).
    state = {"shard": 0, "row_group": 0, "doc": 0, "offset": 0, "epoch": 0, key: -1}
    with pytest.raises(DataLoaderError, match=r"bad dataloader state .*: values must be >= 0"):
        TokenDataLoader(shards, small_tokenizer, 1, 4, state=state)


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"shard": 0, "row_group": 0, "doc": 0, "offset": 0},  # no epoch
        {"shard": "zero", "row_group": 0, "doc": 0, "offset": 0, "epoch": 0},
        {"shard": None, "row_group": 0, "doc": 0, "offset": 0, "epoch": 0},
    ],
)
def test_malformed_state_dict_is_refused(shards, small_tokenizer, state):
    with pytest.raises(DataLoaderError, match="bad dataloader state"):
        TokenDataLoader(shards, small_tokenizer, 1, 4, state=state)


def test_rank_without_documents_raises_instead_of_looping_forever(shards, small_tokenizer):
    # Every shard has at most 4 row groups, so rank 4 of 5 has nothing to read.
    loader = TokenDataLoader(shards, small_tokenizer, 1, 4, rank=4, world_size=5)
    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(loader.next_batch())
        except BaseException as e:  # handed to the test thread
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=300)  # a bound for a loop that never ends, not a speed limit
    assert not thread.is_alive(), "next_batch looped forever on a rank with no documents"
    assert isinstance(outcome[0], DataLoaderError)
    assert "rank 4 of 5 has no documents to read" in str(outcome[0])


def test_rank_without_documents_and_no_loop_just_ends(shards, small_tokenizer):
    loader = TokenDataLoader(shards, small_tokenizer, 1, 4, rank=4, world_size=5, loop=False)
    assert loader.next_batch() is None
