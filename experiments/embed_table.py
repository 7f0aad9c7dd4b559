"""The RO-SGNS paper's table from `steadylm embed` runs: one row per corpus, d, method and settings,
with the mean ± sample standard deviation over the runs (seeds) of that row.

    python experiments/embed_table.py runs/embed-wide [MORE_FOLDERS...] [--out TABLE.md]

Each folder is a sweep (its `runs/*/embed.json`), a run folder, or any folder holding run folders.
Columns: F(X) (the SGNS objective on the row's counts, larger is better), Spearman's rho on
WS-353 similarity / relatedness / whole, SimLex-999 and MEN, 3CosAdd accuracy on the Google and
MSR analogies; then the pairs / questions covered by the vocabulary, which are the same for every
run on one corpus and vocabulary. Runs whose options differ in more than the seed (and the device)
get rows of their own, labelled with the options that differ from the defaults (`sgns sample=0.001`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tomllib
from pathlib import Path

from steadylm.embed.config import EmbedConfig

# Options that do not make a different row: the seed is what the rows pool over, the device does
# not change the method, and the columns already show corpus, d and method.
POOLED = {"seed", "device", "corpus", "text_field", "dim", "method"}
COLUMNS = (
    ("ws353_sim", "ws-sim"),
    ("ws353_rel", "ws-rel"),
    ("ws353", "ws-full"),
    ("simlex999", "SimLex"),
    ("men", "MEN"),
    ("google_analogy", "Google"),
    ("msr_analogy", "MSR"),
)


def find_runs(folders: list[Path]) -> list[Path]:
    """Every folder under `folders` (or equal to one) that holds a finished run's embed.json."""
    found = {
        p.parent for f in folders for p in [f / "embed.json", *f.rglob("embed.json")] if p.is_file()
    }
    return sorted(found)


def row_label(run: Path) -> tuple[str, str]:
    """The run's `--corpus` (names as they are, files and folders by their last part) and its
    method with the options that differ from the defaults, from its config.toml."""
    options = tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))["embed"]
    paths = [options["corpus"]] if isinstance(options["corpus"], str) else options["corpus"]
    defaults = dataclasses.asdict(EmbedConfig())
    changed = [
        f"{k}={v}" for k, v in sorted(options.items()) if k not in POOLED and v != defaults.get(k)
    ]
    return "+".join(Path(p).name for p in paths), " ".join([options["method"], *changed])


def _cell(values: list[float | None], fmt: str) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    if len(present) == 1:
        return format(present[0], fmt)
    sd_fmt = ".1e" if "e" in fmt else fmt
    return f"{format(statistics.mean(present), fmt)} ± {format(statistics.stdev(present), sd_fmt)}"


def table(runs: list[Path]) -> str:
    rows: dict[tuple[str, int, str], list[dict]] = {}
    for run in runs:
        summary = json.loads((run / "embed.json").read_text(encoding="utf-8"))
        corpus, method = row_label(run)
        rows.setdefault((corpus, summary["dim"], method), []).append(summary)
    head = ["corpus", "d", "method", "runs", "F(X)", *(label for _, label in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    covered: dict[str, dict] = {}
    for (corpus, dim, method), group in sorted(rows.items()):
        cells = [
            corpus,
            str(dim),
            method,
            str(len(group)),
            _cell([s["objective"] for s in group], ".4e"),
        ]
        cells += [_cell([s[key] for s in group], ".3f") for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
        covered.setdefault(corpus, group[0]["covered"])
    lines.append("")
    for corpus, n in covered.items():
        shown = ", ".join(f"{label} {n[key]:,}" for key, label in COLUMNS)
        lines.append(
            f"Covered on `{corpus}` (pairs / questions with every word in the vocabulary): {shown}."
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep or run folders")
    parser.add_argument(
        "--out", type=Path, help="write the Markdown table here (default: print it)"
    )
    args = parser.parse_args()
    runs = find_runs(args.folders)
    if not runs:
        parser.exit(2, f"embed_table.py: no embed.json under {', '.join(map(str, args.folders))}\n")
    text = table(runs)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
