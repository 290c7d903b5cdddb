"""File helpers: atomic writes and SHA-256 of a file (checkpoints, tokenizers, shards, JSONL, manifests).

An atomic write goes to a hidden temporary file in the destination folder and is renamed over the target,
so a crash or Ctrl-C never leaves a half-written shard, JSONL or manifest behind. Readers that list a
folder skip names starting with "." and so never see the temporary file.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO


def temporary_path(path: Path) -> Path:
    """A fresh hidden name beside `path` for writing it atomically."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = temporary_path(target)
    try:
        with tmp_path.open("xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return target


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically (see `write_atomically`)."""
    return write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (shards are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
