"""`steadylm export-hf`: write a Hugging Face GPT-2 folder from a steadylm checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-hf",
        help="export a checkpoint as a Hugging Face GPT2LMHeadModel folder",
        description="Write config.json, model.safetensors and tokenizer.json that "
        "transformers' GPT2LMHeadModel.from_pretrained loads with equal logits. Only plain GPT-2 "
        "architectures can be exported (no MLRA, other norm layouts, σReparam, embedding norms, QK-norm).",
    )
    p.add_argument(
        "path",
        metavar="RUN|CHECKPOINT",
        help="a run directory (latest checkpoint) or a checkpoint folder",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.model.hf import export_hf

    out = export_hf(args.path, args.out)
    print(f"wrote {out} (load with GPT2LMHeadModel.from_pretrained({str(out)!r}))")
    return 0
