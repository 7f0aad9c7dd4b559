"""`steadylm bench`: speed and monitoring cost on this machine, as ratios measured side by side."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure training speed, bf16 vs fp32, monitor and data cost, MLRA vs MHA, "
        "TT embedding cost",
        description="At the reference config (GPT-2 vocabulary, 6 layers x 256, 4 heads, block 256, "
        "batch 8, default monitors): the matmul peak for fp32 and bf16; training tokens/s and FLOP/s "
        "as a fraction of the peak with a per-section step breakdown; monitor cost (timed sections, "
        "periodic steps amortised, and an on/off A/B); TEV on a 50257 x 768 matrix; the "
        "gradient-variance reference against TEV; MLRA vs MHA step time and peak memory; the TT "
        "embedding's per-step cost (gather, tied-head reconstruction, TEV; rank 16); tokenizer "
        "throughput and the data reader's share. Medians after warm-up; each training "
        "configuration runs in a fresh process. The first line names the processor and what it "
        "does fast; where bf16 matmuls are emulated the bf16 rows are skipped. Needs the default "
        "corpus (fetched on first use).",
    )
    p.add_argument("--steps", type=int, default=6, help="timed steps per configuration (default 6)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the torch.compile rows (each compiles for about a minute on CPU)",
    )
    p.add_argument(
        "--compare",
        choices=["nanogpt"],
        help="instead of the full benchmark: steadylm (default monitors) against a "
        "nanoGPT-equivalent plain PyTorch loop at the reference config, side by side, in fp32 "
        "and, where bf16 is native, steadylm in bf16 against the loop in fp32 (nanoGPT on a CPU) "
        "and in bf16; eager and (unless --no-compile) compiled; prints tokens/s of each and the "
        "ratio",
    )
    p.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="with --compare: repeat the comparison in N fresh processes and report the median "
        "ratio over them, with each round's (default 1; the ratio moves between processes more "
        "than within one, so 3 or more for a figure to quote)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--out", metavar="DIR", help="also write bench.json and bench.md into DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm import bench
    from steadylm.errors import SteadyLMError

    if args.steps < 1 or args.warmup < 0:
        raise SteadyLMError("--steps must be >= 1 and --warmup >= 0")
    if args.rounds is not None and (args.rounds < 1 or not args.compare):
        raise SteadyLMError("--rounds must be >= 1 and goes with --compare")
    measure, render, name = (
        (bench.compare_nanogpt, bench.format_compare, "compare-nanogpt")
        if args.compare
        else (bench.run, bench.format_table, "bench")
    )
    result = measure(
        steps=args.steps,
        warmup=args.warmup,
        compile=not args.no_compile,
        progress=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True),
        **({"rounds": args.rounds or 1} if args.compare else {}),
    )
    table = render(result)
    print(json.dumps(result, indent=1) if args.json else table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        command = (
            "steadylm bench " + " ".join(a for a in sys.argv[2:])
            if len(sys.argv) > 2
            else "steadylm bench"
        )
        (out / f"{name}.md").write_text(f"Produced by `{command}`.\n\n```\n{table}\n```\n")
    return 0
