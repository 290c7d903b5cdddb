"""Token batches for pretraining, streamed from parquet shards, resumable to the exact token.

The stream is every document of every shard, in order, each as [<|bos|>] + its tokens, concatenated.
Under DDP, rank r of W reads row groups r, r + W, r + 2W, ... of each shard, so ranks never share a
document. A batch takes the next B·T + 1 tokens: inputs are the first B·T, targets the last B·T.

`state_dict()` names the first token not yet used (shard, row group, document, token offset, epoch), so a
loader built with that state continues with exactly the tokens an uninterrupted loader would have given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanochat.data.shards import num_row_groups, read_row_group
from nanochat.tokenizer import Tokenizer


class DataLoaderError(ValueError):
    """A loader state that does not fit the data, or data that cannot feed a batch."""


@dataclass(frozen=True)
class LoaderState:
    shard: int = 0
    row_group: int = 0  # absolute row-group index in the shard (already strided for this rank)
    doc: int = 0
    offset: int = 0  # tokens of that document already used
    epoch: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> LoaderState:
        try:
            values = {k: int(data[k]) for k in ("shard", "row_group", "doc", "offset", "epoch")}
        except (KeyError, TypeError, ValueError) as e:
            raise DataLoaderError(f"bad dataloader state {data!r}: {e}") from e
        if min(values.values()) < 0:  # a negative index would silently count from the end
            raise DataLoaderError(f"bad dataloader state {data!r}: values must be >= 0")
        return cls(**values)


class TokenDataLoader:
    def __init__(
        self,
        shards: Sequence[Path],
        tokenizer: Tokenizer,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        state: LoaderState | dict | None = None,
        loop: bool = True,
    ) -> None:
        if not shards:
            raise DataLoaderError("no shards to read")
        if batch_size < 1 or seq_len < 1:
            raise DataLoaderError(f"batch size and sequence length must be >= 1, got {batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise DataLoaderError(f"rank {rank} is outside world size {world_size}")
        self.shards = [Path(p) for p in shards]
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.loop = loop
        if isinstance(state, dict):
            state = LoaderState.from_dict(state)
        state = state or LoaderState(row_group=rank)
        if state.shard >= len(self.shards) or state.row_group % world_size != rank:
            raise DataLoaderError(
                f"dataloader state {asdict(state)} does not fit {len(self.shards)} shards read by rank "
                f"{rank} of {world_size} (resume with the same data and number of processes)"
            )
        self._next = state  # where the next row group to read starts (document and offset included)
        self._pending: deque[tuple[LoaderState, list[int]]] = deque()  # documents read, not yet used up
        self._bos = tokenizer.get_bos_token_id()

    def state_dict(self) -> dict:
        """The position of the first token the next batch will use."""
        head = self._pending[0][0] if self._pending else self._next
        return asdict(head)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            batch = self.next_batch()
            if batch is None:
                return
            yield batch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(inputs, targets), each (batch_size, seq_len) long; None when the data ran out (loop=False)."""
        needed = self.batch_size * self.seq_len + 1
        tokens: list[int] = []
        while len(tokens) < needed:
            if not self._pending and not self._read_row_group():
                return None
            position, doc_tokens = self._pending[0]
            take = doc_tokens[position.offset : position.offset + needed - len(tokens)]
            tokens.extend(take)
            offset = position.offset + len(take)
            if offset >= len(doc_tokens):
                self._pending.popleft()
            else:
                self._pending[0] = (LoaderState(**{**asdict(position), "offset": offset}), doc_tokens)
        buffer = torch.tensor(tokens, dtype=torch.long)
        inputs = buffer[:-1].view(self.batch_size, self.seq_len)
        targets = buffer[1:].view(self.batch_size, self.seq_len)
        if self.device.type == "cuda":
            return inputs.pin_memory().to(self.device, non_blocking=True), targets.pin_memory().to(
                self.device, non_blocking=True
            )
        return inputs.to(self.device), targets.to(self.device)

    def _read_row_group(self) -> bool:
        """Queue the documents of this rank's next non-empty row group; False at the end of the data."""
        state = self._next
        wrapped = False
        while True:
            if state.shard >= len(self.shards):
                if not self.loop:
                    self._next = state
                    return False
                if wrapped:
                    raise DataLoaderError(
                        f"rank {self.rank} of {self.world_size} has no documents to read: the shards have "
                        "too few row groups (or only empty ones) for this many processes"
                    )
                wrapped = True
                state = LoaderState(row_group=self.rank, epoch=state.epoch + 1)
            path = self.shards[state.shard]
            if state.row_group >= num_row_groups(path):
                state = LoaderState(shard=state.shard + 1, row_group=self.rank, epoch=state.epoch)
                continue
            texts = read_row_group(path, state.row_group)
            encoded = (
                self.tokenizer.encode(texts[state.doc :], prepend=self._bos) if texts[state.doc :] else []
            )
            for i, doc_tokens in enumerate(encoded):
                offset = state.offset if i == 0 else 0
                if offset < len(doc_tokens):
                    position = LoaderState(state.shard, state.row_group, state.doc + i, offset, state.epoch)
                    self._pending.append((position, doc_tokens))
            state = LoaderState(state.shard, state.row_group + self.world_size, 0, 0, state.epoch)
            if self._pending:
                self._next = state
                return True
