"""Normalised text, deduplication and the train/validation/test split of labelled text.

The split is a function of each example's normalised text alone (a salted sha256), so it is the
same on every machine and in every Python process, does not depend on the order or the other rows
of the file, and puts a sentence that two tasks share into the same split of both.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass

# The seed of the split: changing it reshuffles every task, so it is fixed.
SPLIT_SEED = "steadylm-tasks-1"
# Shares of train and validation; the rest (about 10%) is test.
TRAIN_SHARE = 0.8
VALIDATION_SHARE = 0.1
SPLITS = ("train", "validation", "test")

# ASCII bytes that are not letters or digits, deleted in one pass (the common, fast case).
_ASCII_NOT_ALNUM = bytes(b for b in range(256) if not chr(b).isascii() or not chr(b).isalnum())


def normalise(text: str) -> str:
    """The key under which two texts count as the same: letters and digits only, case-folded,
    accents removed (NFKD, then combining marks dropped with everything that is not a letter or a
    digit), spaces and punctuation removed.

    Sources spell the same sentence differently ("self-absorbed" / "self absorbed",
    "''Conan''" / '"Conan"', "mess" / "mess."); this key matches them. A text with no letter or
    digit at all normalises to "".
    """
    if text.isascii():
        return text.lower().encode("ascii").translate(None, _ASCII_NOT_ALNUM).decode("ascii")
    return "".join(filter(str.isalnum, unicodedata.normalize("NFKD", text).casefold()))


@dataclass(frozen=True)
class Dedup:
    """What `deduplicate` kept and dropped."""

    rows: list[tuple[str, int]]  # (text, label), first occurrence of each normalised text
    keys: list[str]  # the normalised text of each kept row
    duplicates: int  # repeats of a kept text with the same label
    conflicting: int  # rows dropped because copies of their text carry different labels
    empty: int  # rows without a letter or digit


def deduplicate(rows: list[tuple[str, int]]) -> Dedup:
    """One row per normalised text, in first-occurrence order.

    A text whose copies disagree on the label is dropped altogether (all its copies count in
    `conflicting`): neither label can be trusted, and keeping one would bias the task.
    """
    first: dict[str, tuple[str, int]] = {}
    labels: dict[str, set[int]] = {}
    copies: dict[str, int] = {}
    for text, label in rows:
        key = normalise(text)
        first.setdefault(key, (text, label))
        labels.setdefault(key, set()).add(label)
        copies[key] = copies.get(key, 0) + 1
    empty = copies.pop("", 0)
    conflicted = {key for key in copies if len(labels[key]) > 1}
    conflicting = sum(copies[key] for key in conflicted)
    keys = [key for key in copies if key not in conflicted]
    kept = [first[key] for key in keys]
    return Dedup(kept, keys, len(rows) - empty - conflicting - len(kept), conflicting, empty)


def split_key(key: str) -> bytes:
    """The salted sha256 of a normalised text: its split and its place within the split."""
    return hashlib.sha256(f"{SPLIT_SEED}\0{key}".encode()).digest()


def split_of(text: str) -> str:
    """ "train", "validation" or "test" for a text."""
    return _split(split_key(normalise(text)))


def _split(key: bytes) -> str:
    """The first 8 bytes of the key as a fraction of 2**64, cut at the train and validation shares."""
    u = int.from_bytes(key[:8], "big") / 2**64
    return (
        "train"
        if u < TRAIN_SHARE
        else "validation"
        if u < TRAIN_SHARE + VALIDATION_SHARE
        else "test"
    )


def split_rows(dedup: Dedup) -> dict[str, list[tuple[str, int]]]:
    """Deduplicated rows grouped by `split_of`, each split ordered by `split_key` (a fixed shuffle:
    sources are often sorted by label, which would hurt a trainer that reads them in order)."""
    hashed = sorted(zip(map(split_key, dedup.keys), dedup.rows))
    out: dict[str, list[tuple[str, int]]] = {name: [] for name in SPLITS}
    for digest, row in hashed:
        out[_split(digest)].append(row)
    return out
