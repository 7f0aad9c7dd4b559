"""`steadylm sweep SPEC.toml --out DIR`: train a grid of recipes, one run directory each."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from steadylm.experiments import spec as _spec

# The spec format is documented once, in the spec module; --help shows it as written there.
HELP = f"""\
Train every run of a sweep spec: variants x grid x seeds on top of a base config.

{_spec.__doc__.split(chr(10), 1)[1].strip(chr(10))}

Every run's config is checked before any training. Runs go to DIR/runs/NAME;
DIR/index.jsonl lists name, overrides, status and run folder. Re-running the same command
continues: finished and diverged runs are kept, interrupted ones resume from their latest
checkpoint, failed ones are tried again. A failed run is recorded and the sweep goes on;
the exit code is 1 if any run failed.
Then: steadylm report DIR --out REPORT."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="train a grid of recipes (variants x grid x seeds), resumable",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", metavar="SPEC.toml", help="the sweep spec")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder (index.jsonl, runs/)")
    p.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="train N runs at once in subprocesses, each with cores/N threads (default 1: in this process)",
    )
    p.add_argument("--dry-run", action="store_true", help="check the spec and list the runs; train nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.errors import SteadyLMError
    from steadylm.experiments.spec import parse_spec
    from steadylm.experiments.sweep import Sweep

    if args.jobs < 1:
        raise SteadyLMError(f"--jobs: must be >= 1, got {args.jobs}")
    sweep = Sweep(parse_spec(args.spec), args.out)
    if args.dry_run:
        spec = sweep.spec
        print(f"base {spec.base}; every run: " + (" ".join(f"{k}={v!r}" for k, v in spec.fixed.items()) or "-"))
        for e in sweep.entries:
            state = e.status if e.status != "pending" else ("resume" if e.resumable() else "new")
            own = [a for a, k in zip(e.plan.override_args(), e.plan.overrides) if k not in spec.fixed]
            print(f"{e.plan.name:<40} {state:<9} {' '.join(own)}")
        print(f"{len(sweep.entries)} runs, {len(sweep.todo)} to train, in {sweep.out}/runs/")
        return 0
    completed = sweep.run(jobs=args.jobs, progress=not args.no_progress)
    counts = Counter(e.status for e in sweep.entries)
    print(f"{len(sweep.entries)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for e in sweep.entries:
        if e.status == "failed":
            print(f"  failed  {e.plan.name}: {e.error}")
    print(f"index   {sweep.out / 'index.jsonl'}")
    if not completed:
        print("steadylm sweep: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    print(f"report  steadylm report {sweep.out} --out {sweep.out / 'report'}")
    return 1 if counts.get("failed") else 0
