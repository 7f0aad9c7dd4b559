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
the exit code is 1 if any run failed. The spec may grow between re-runs (a control arm, more
seeds) as long as every run already in DIR keeps its name and overrides.
With --launcher submitit each run is a cluster job (SLURM) and DIR/index.jsonl records its
job id; re-running follows jobs still queued or running and submits the rest.
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
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N runs at once in subprocesses, each with cores/N threads (default 1: in this process)",
    )
    p.add_argument(
        "--launcher",
        choices=("local", "submitit"),
        default="local",
        help="local: train here (default); submitit: one cluster job per run (SLURM), see docs/compare.md",
    )
    cluster = p.add_argument_group(
        "cluster jobs (--launcher submitit; override the spec's [sweep.launcher])"
    )
    cluster.add_argument(
        "--cluster",
        help="slurm (default), or local: every job at once as a process on this machine",
    )
    cluster.add_argument("--partition", help="SLURM partition")
    cluster.add_argument("--account", help="SLURM account")
    cluster.add_argument(
        "--time", type=int, metavar="MIN", help="time limit per job in minutes (default 60)"
    )
    cluster.add_argument("--nodes", type=int, help="nodes per job (default 1)")
    cluster.add_argument("--gpus", type=int, help="GPUs per node (default 0)")
    cluster.add_argument(
        "--procs", type=int, help="training processes per node (default: one per GPU)"
    )
    cluster.add_argument("--cpus", type=int, help="CPUs per node (default: the cluster's)")
    cluster.add_argument(
        "--mem-gb", type=int, help="memory per node in GB (default: the cluster's)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check the spec and list the runs; train nothing"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.errors import SteadyLMError
    from steadylm.experiments.spec import parse_spec
    from steadylm.experiments.sweep import Sweep
    from steadylm.status import RunStatus

    if args.jobs < 1:
        raise SteadyLMError(f"--jobs: must be >= 1, got {args.jobs}")
    sweep = Sweep(parse_spec(args.spec), args.out)
    launcher = _launcher(args, sweep.spec.launcher)
    if args.dry_run:
        spec = sweep.spec
        print(
            f"base {spec.base}; every run: "
            + (" ".join(f"{k}={v!r}" for k, v in spec.fixed.items()) or "-")
        )
        for e in sweep.entries:
            state = (
                e.status
                if e.status != RunStatus.PENDING
                else ("resume" if e.resumable() else "new")
            )
            own = [
                a
                for a, k in zip(e.plan.override_args(), e.plan.overrides, strict=True)
                if k not in spec.fixed
            ]
            print(f"{e.plan.name:<40} {state:<9} {' '.join(own)}")
        print(f"{len(sweep.entries)} runs, {len(sweep.todo)} to train, in {sweep.out}/runs/")
        return 0
    completed = sweep.run(jobs=args.jobs, progress=not args.no_progress, launcher=launcher)
    counts = Counter(e.status for e in sweep.entries)
    print(f"{len(sweep.entries)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for e in sweep.entries:
        if e.status == RunStatus.FAILED:
            print(f"  failed  {e.plan.name}: {e.error}")
    print(f"index   {sweep.out / 'index.jsonl'}")
    if not completed:
        jobs = " (submitted jobs go on)" if launcher is not None else ""
        print(
            f"steadylm sweep: interrupted{jobs}; run the same command again to continue",
            file=sys.stderr,
        )
        return 130
    print(f"report  steadylm report {sweep.out} --out {sweep.out / 'report'}")
    return 1 if counts.get(RunStatus.FAILED) else 0


CLUSTER_FLAGS = (
    "cluster",
    "partition",
    "account",
    "time",
    "nodes",
    "gpus",
    "procs",
    "cpus",
    "mem_gb",
)


def _launcher(args: argparse.Namespace, table: dict):
    """The submitit launcher with the spec's [sweep.launcher] and the flags, or None (local)."""
    from steadylm.errors import SteadyLMError
    from steadylm.experiments.submit import SubmititLauncher, launcher_config

    flags = {k: getattr(args, k) for k in CLUSTER_FLAGS if getattr(args, k) is not None}
    if args.launcher == "local":
        if flags:
            given = next(iter(flags)).replace("_", "-")
            raise SteadyLMError(f"--{given}: only applies to --launcher submitit")
        return None
    if args.jobs != 1:
        raise SteadyLMError(
            "--jobs: applies to --launcher local; with submitit every run is its own job"
        )
    return SubmititLauncher(launcher_config(table, flags))
