"""`steadylm report DIR... --out REPORT`: compare recipes from sweeps and runs."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
Compare the runs of one or more sweeps (folders with index.jsonl), run folders, or folders of
runs. Writes REPORT/report.md, a self-contained REPORT/report.html (figures embedded),
REPORT/plots/*.png and REPORT/summary.json (every number of the tables).

The report has: which runs collapsed (final validation loss within 0.05 nats of the unigram
cross-entropy of the validation tokens evaluated, or above; computed through the cached data
preparation); per depth (model.n_layer), curves and a table of finals (mean +- sd over seeds);
parameters, embedding parameters and tokens/s per recipe, with final loss against embedding
parameters (the Pareto front) where recipes differ in embedding size (a TT embedding's ranks);
learning-rate sensitivity (Wortsman et al. 2023); each variant against the baseline per (depth,
lr) cell, seed-paired, with a pooled standard error, t interval and Holm's correction over the
cells compared, the depth interaction, the difference along training and each recipe at its own
best lr; TEV signals against the final loss and the embedding's gradient variance within (depth,
lr) groups (permutations inside groups), TEV growth between Adam's pure-noise and pure-drift
references, and TEV at a matched step and a matched validation loss; and an early-warning test
against instability events defined from the loss alone (RISE nats above its running minimum, or
non-finite), each signal's hits set against the same number of alarms at random steps. Collapsed
and diverged cells are shown but kept out of comparisons. What cannot be computed is said in words."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="Markdown + HTML report comparing recipes (sweeps or runs)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dirs", nargs="+", metavar="DIR", help="a sweep folder, a run folder, or a folder of runs"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="REPORT",
        help="report folder (replaced if it holds a report)",
    )
    p.add_argument("--title", default="steadylm report", help="the report's title")
    p.add_argument(
        "--preface",
        metavar="FILE.md",
        help="Markdown (headings, paragraphs, - lists) placed under the title: your reading of the results",
    )
    p.add_argument(
        "--baseline",
        metavar="VARIANT",
        help="the variant the others are compared with (default: the first variant)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=50,
        metavar="W",
        help="early warning: differences forming a signal's baseline (default 50)",
    )
    p.add_argument(
        "--k",
        type=float,
        default=4.0,
        metavar="K",
        help="early warning: standard deviations from the baseline that count as out of range (default 4)",
    )
    p.add_argument(
        "--horizon",
        type=int,
        default=50,
        metavar="H",
        help="early warning: steps before an event in which a flag counts as a warning (default 50)",
    )
    p.add_argument(
        "--rise",
        type=float,
        default=1.0,
        metavar="NATS",
        help="early warning: an instability event is the loss this far above its running minimum (default 1)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars while preparing the data"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.errors import SteadyLMError
    from steadylm.experiments.report import Options, write_report

    preface = ""
    if args.preface:
        try:
            preface = Path(args.preface).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SteadyLMError(f"--preface: cannot read {args.preface!r} ({e})") from None
    html = write_report(
        args.dirs,
        args.out,
        Options(
            window=args.window,
            k=args.k,
            horizon=args.horizon,
            rise=args.rise,
            baseline=args.baseline,
            title=args.title,
            preface=preface,
            progress=not args.no_progress,
        ),
    )
    print(f"report  {html.parent / 'report.md'}\nhtml    {html}")
    return 0
