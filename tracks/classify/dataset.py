"""Labeled text datasets for the classifiers: where they come from, and one deterministic split.

- `fortunes`: Debian's `fortunes` package (the BSD fortune-mod cookie files), one class per topical file
  (computers, science, politics, ...), fetched with `apt-get download` and read with `dpkg-deb` through the
  demo-corpus helpers in `nanochat.data.corpora`. Attribution lines ("-- Kirk, stardate 3468.1") are cut
  off: they name the source, not the topic, and would make some classes trivially easy.
- `guardrail`: the prompt-injection set kept in this repository (`tracks/classify/data/guardrail.jsonl`,
  written by hand for it; see docs/classify.md).
- any JSONL file with one `{"text": str, "label": str}` object per line.

Every dataset carries its provenance (licence, package, SHA-256) and a hash of its content, which the
model registry records so a model can be traced to the exact data it was trained on.

It deliberately does not vectorize or train: `pipelines` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanochat.data.corpora import DemoSource, fetch_package, read_package_files
from nanochat.files import sha256_file

GUARDRAIL_DATA = Path(__file__).resolve().parent / "data" / "guardrail.jsonl"
DEFAULT_CACHE = Path("build") / "classify" / "downloads"
FORTUNE_DIR = "usr/share/games/fortunes"
# Topical files with at least ~150 fortunes each; grab-bags (cookie, miscellaneous, fortunes) are left out.
FORTUNE_CATEGORIES = (
    "computers",
    "education",
    "food",
    "law",
    "men-women",
    "politics",
    "science",
    "songs-poems",
    "sports",
    "work",
)
FORTUNE_LICENCE = (
    "BSD (Debian copyright file of fortune-mod: 'This program falls under the BSD copyright', the 3-clause "
    "licence of the Regents of the University of California); the fortunes are quotations and jokes "
    "collected from Usenet and elsewhere"
)
_ATTRIBUTION = re.compile(r"\n\s*--\s*[^\n]*(?:\n\s+[^\n]*)*\s*$")  # a trailing "-- Author, work" block


class DatasetError(ValueError):
    """A dataset that cannot be found, read or used; the message says what to fix."""


@dataclass(frozen=True)
class LabeledTexts:
    """Texts with one label each, plus where they came from."""

    name: str
    texts: list[str]
    labels: list[str]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DatasetError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels")
        if not self.texts:
            raise DatasetError(f"{self.name}: no examples")
        if len(set(self.labels)) < 2:
            raise DatasetError(f"{self.name}: a classifier needs at least two labels, got {set(self.labels)}")

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def counts(self) -> dict[str, int]:
        counter = Counter(self.labels)
        return {label: counter[label] for label in self.classes}

    def sha256(self) -> str:
        """Hash of the (text, label) pairs in order: the same data gives the same hash on any machine."""
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels, strict=True):
            digest.update(json.dumps([text, label], ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """Size, classes and provenance, for reports and model metadata."""
        return {
            "name": self.name,
            "examples": len(self.texts),
            "classes": self.counts(),
            "characters": sum(map(len, self.texts)),
            "sha256": self.sha256(),
            **self.source,
        }

    def subset(self, indices: list[int]) -> LabeledTexts:
        return LabeledTexts(
            self.name, [self.texts[i] for i in indices], [self.labels[i] for i in indices], self.source
        )


def split_fortunes(text: str) -> list[str]:
    """A fortune file's entries (between lines holding only '%'), attributions removed, blanks dropped."""
    entries = []
    for raw in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        entry = _ATTRIBUTION.sub("", raw.strip("\n")).strip()
        if entry:
            entries.append(entry)
    return entries


def _fortune_examples(files: dict[str, bytes]) -> list[tuple[str, str]]:
    examples = []
    for name in sorted(files):
        label = name.rsplit("/", 1)[-1]
        try:
            text = files[name].decode("utf-8")
        except UnicodeDecodeError:
            text = files[name].decode("latin-1")  # a few old cookie files are Latin-1
        examples.extend((entry, label) for entry in split_fortunes(text))
    return examples


FORTUNES = DemoSource(
    name="fortunes",
    title="Debian fortunes (fortune-mod cookie files), one class per topic file",
    registry="debian",
    package="fortunes",
    version=None,
    members=rf"{FORTUNE_DIR}/({'|'.join(re.escape(c) for c in FORTUNE_CATEGORIES)})",
    licence=FORTUNE_LICENCE,
    licence_files=("usr/share/doc/fortunes/copyright",),
    licence_phrase="This program falls under the BSD copyright",
    convert=_fortune_examples,
    min_items=3000,
    kind="classify",
)


def load_fortunes(cache_dir: str | os.PathLike[str] = DEFAULT_CACHE) -> LabeledTexts:
    """The fortunes topic dataset, downloading the .deb into `cache_dir` unless it is already there."""
    archive = fetch_package(FORTUNES, cache_dir)
    files = read_package_files(archive, [FORTUNES.members, *FORTUNES.licence_files])
    copyright_text = files.get(FORTUNES.licence_files[0], b"").decode("utf-8", errors="replace")
    if " ".join(FORTUNES.licence_phrase.split()) not in " ".join(copyright_text.split()):
        raise DatasetError(
            f"{archive}: the copyright file no longer says {FORTUNES.licence_phrase!r}; review the licence"
        )
    members = {name: data for name, data in files.items() if re.fullmatch(FORTUNES.members, name)}
    missing = sorted(set(FORTUNE_CATEGORIES) - {name.rsplit("/", 1)[-1] for name in members})
    if missing:
        raise DatasetError(f"{archive} lacks the fortune files {missing}; the package changed")
    examples = FORTUNES.convert(members)
    if len(examples) < FORTUNES.min_items:
        raise DatasetError(f"{archive}: only {len(examples)} fortunes; the package changed")
    source = {
        "title": FORTUNES.title,
        "licence": FORTUNES.licence,
        "package": f"debian:{FORTUNES.package}",
        "file": archive.name,
        "package_sha256": sha256_file(archive),
        "fetched_with": " ".join(FORTUNES.fetch_command),
        "preprocessing": "entries split at '%' lines; trailing '-- attribution' blocks removed",
    }
    return LabeledTexts("fortunes", [text for text, _ in examples], [label for _, label in examples], source)


def load_jsonl(path: str | os.PathLike[str], name: str | None = None) -> LabeledTexts:
    """One `{"text": str, "label": str}` object per non-blank line; errors name the file and line."""
    source_path = Path(path)
    if not source_path.is_file():
        raise DatasetError(f"{source_path}: labeled JSONL file not found")
    texts, labels = [], []
    with source_path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{source_path}:{number}: not valid JSON ({exc.msg})") from None
            text = record.get("text") if isinstance(record, dict) else None
            label = record.get("label") if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise DatasetError(f"{source_path}:{number}: 'text' must be a non-empty string")
            if not isinstance(label, str) or not label.strip():
                raise DatasetError(f"{source_path}:{number}: 'label' must be a non-empty string")
            texts.append(text)
            labels.append(label)
    source = {"file": source_path.name, "file_sha256": sha256_file(source_path)}
    return LabeledTexts(name or source_path.stem, texts, labels, source)


def load_guardrail_data() -> LabeledTexts:
    """The curated prompt-injection set shipped in this repository."""
    data = load_jsonl(GUARDRAIL_DATA, "guardrail")
    return LabeledTexts(
        data.name,
        data.texts,
        data.labels,
        {
            **data.source,
            "licence": "MIT (this repository; every example was written for it)",
            "title": "Prompt-injection / jailbreak examples vs benign requests, written by hand",
        },
    )


def load_dataset(spec: str, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE) -> LabeledTexts:
    """`fortunes`, `guardrail`, or the path of a labeled JSONL file."""
    if spec == "fortunes":
        return load_fortunes(cache_dir)
    if spec == "guardrail":
        return load_guardrail_data()
    if spec.endswith(".jsonl") or Path(spec).exists():
        return load_jsonl(spec)
    raise DatasetError(f"unknown dataset {spec!r}: use fortunes, guardrail or a .jsonl file of text/label")


def stratified_split(
    data: LabeledTexts, test_fraction: float = 0.2, seed: int = 0
) -> tuple[LabeledTexts, LabeledTexts]:
    """(train, test) with each class split in the same proportion; the same seed gives the same split."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    smallest = min(data.counts().values())
    if smallest < 2:
        raise DatasetError(f"{data.name}: every class needs at least 2 examples to split, smallest has 1")
    indices = list(range(len(data.texts)))
    train, test = train_test_split(
        indices, test_size=test_fraction, random_state=seed, stratify=data.labels, shuffle=True
    )
    return data.subset(sorted(train)), data.subset(sorted(test))
