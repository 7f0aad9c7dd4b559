"""`steadylm train`: pre-train a GPT with always-on stability monitoring."""

from __future__ import annotations

import argparse
from pathlib import Path

from steadylm.cli._common import add_config_args, add_run_args, run_config_source


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (single process, or under torchrun)",
        description="Train a GPT-style model into a run directory: config.toml, provenance.json, "
        "metrics.jsonl (one line per step: loss, lr, grad_norm, tev_mean, tev_std, ...), "
        "checkpoints/ and status.json. --resume continues exactly from the latest verified checkpoint.",
    )
    add_config_args(p)
    add_run_args(
        p,
        "checkpoint and stop after STEP optimizer steps (the schedule still follows train.max_steps)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.config import load_config
    from steadylm.status import RunStatus
    from steadylm.train.trainer import Trainer

    out = Path(args.out)
    source = run_config_source(args)
    cfg = load_config(source, args.overrides)
    result = Trainer(
        cfg, out, resume=args.resume, progress=not args.no_progress, stop_at=args.stop_at
    ).fit()
    print(summary(result))
    return 0 if result.status in (RunStatus.FINISHED, RunStatus.STOPPED) else 1


def summary(result) -> str:
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    return "\n".join(
        [
            f"status      {result.status} at step {result.step}",
            f"val loss    {fmt(result.val_loss, '.4f')}   perplexity {fmt(result.val_ppl, '.2f')}",
            f"mu_TEV      {fmt(result.tev_mean, '.6f')}   sigma_TEV {fmt(result.tev_std, '.6f')}",
            f"run         {result.run_dir}",
            f"checkpoint  {result.checkpoint or 'none'}",
        ]
    )
