"""The user's labelled text: a `.jsonl` or `.csv` file with `text` and `label` fields.

Labels may be strings or integers (in a CSV, a column of integers counts as integers); the label
names are the distinct values sorted (numerically for integers), and a label's id is its index.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from steadylm.data.corpus import jsonl_records, read_text
from steadylm.errors import DataError

SUFFIXES = (".jsonl", ".csv")
TEXT_FIELD = "text"
LABEL_FIELD = "label"


def read_labelled_file(path: Path) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """(label names, rows of (text, label id)) from a `.jsonl` or `.csv` file.

    Stops with one line naming the file (and the line, for a bad record) when a field is missing,
    a label is neither a string nor an integer, or the file holds no example.
    """
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use {' or '.join(SUFFIXES)}")
    records = _read_jsonl(path) if suffix == ".jsonl" else _read_csv(path)
    if not records:
        raise DataError(f"{path}: no examples; the file is empty")
    values = [label for _, label, _ in records]
    if all(isinstance(v, int) for v in values) or all(isinstance(v, str) for v in values):
        names = sorted(set(values))
    else:
        kinds = {type(v).__name__ for v in values}
        raise DataError(
            f"{path}: labels mix {' and '.join(sorted(kinds))}; use one kind for all rows"
        )
    index = {name: i for i, name in enumerate(names)}
    return tuple(map(str, names)), [(text, index[label]) for text, label, _ in records]


def _read_jsonl(path: Path) -> list[tuple[str, str | int, str]]:
    records = []
    for where, record in jsonl_records(path):
        if not isinstance(record, dict):
            raise DataError(
                f"{where}: a JSON {type(record).__name__}, not an object with text and label fields"
            )
        records.append(_record(record, list(record), where))
    return records


def _read_csv(path: Path) -> list[tuple[str, str | int, str]]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    fields = reader.fieldnames or []
    missing = [f for f in (TEXT_FIELD, LABEL_FIELD) if fields and f not in fields]
    if missing:
        raise DataError(
            f"{path}: no {' or '.join(map(repr, missing))} column (found: {', '.join(fields)}); "
            "the file needs text and label"
        )
    records = []
    for record in reader:
        where = f"{path}:{reader.line_num}"
        text, label, _ = _record(record, fields, where)
        # csv gives every value as text: a label that spells an integer is one.
        records.append((text, _int_or_str(label), where))
    if records and not all(isinstance(label, int) for _, label, _ in records):
        records = [(text, str(label), where) for text, label, where in records]
    return records


def _record(record: dict, fields: Sequence[str], where: str) -> tuple[str, str | int, str]:
    for field in (TEXT_FIELD, LABEL_FIELD):
        if field in record and record[field] is None:
            raise DataError(f"{where}: no value for {field!r}")
        if field not in record:
            found = ", ".join(map(str, fields)) or "nothing"
            raise DataError(
                f"{where}: no {field!r} field (found: {found}); the file needs text and label"
            )
    text, label = record[TEXT_FIELD], record[LABEL_FIELD]
    if not isinstance(text, str):
        raise DataError(f"{where}: {TEXT_FIELD!r} is {type(text).__name__}, not a string")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataError(
            f"{where}: {LABEL_FIELD!r} is {json.dumps(label)}; use a string or an integer"
        )
    if isinstance(label, str) and not label.strip():
        raise DataError(f"{where}: {LABEL_FIELD!r} is empty")
    return text.strip(), label.strip() if isinstance(label, str) else label, where


def _int_or_str(value: str | int) -> str | int:
    try:
        return int(value)
    except ValueError:
        return value
