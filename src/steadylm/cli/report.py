"""`steadylm report DIR... --out REPORT`: compare recipes from sweeps and runs."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
Compare the runs of one or more sweeps (folders with index.jsonl), run folders, or folders of
runs. Writes REPORT/report.md, a self-contained REPORT/report.html (figures embedded),
REPORT/plots/*.png and REPORT/summary.json (every number of the tables).

The report has, per depth (model.n_layer): one line per variant for training and validation
loss, mu_TEV and sigma_TEV, gradient norm, gradient variance and the final residual RMS per
layer, with spike markers; a table of final validation loss and perplexity, final mu/sigma_TEV,
spikes, skipped steps and divergence, mean +- sd over seeds. Then learning-rate sensitivity
(final loss vs lr, Wortsman et al. 2023), TEV against gradient variance across runs at matched
steps (Spearman) with Delta TEV^2 against cumulative lr^2 x gradient variance, and an early-warning
comparison: how many steps before each spike TEV left its normal range (first differences
more than K standard deviations from the mean of the previous W), against the same rule on the
gradient norm. What cannot be computed from the runs is said in words."""


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
        help="early warning: steps before a spike in which a flag counts as a warning (default 50)",
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
            window=args.window, k=args.k, horizon=args.horizon, title=args.title, preface=preface
        ),
    )
    print(f"report  {html.parent / 'report.md'}\nhtml    {html}")
    return 0
