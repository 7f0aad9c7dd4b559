"""`steadylm sample`: generate text from a checkpoint or a Hugging Face GPT-2 folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from steadylm.errors import SteadyLMError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a model",
        description="Sample continuations with temperature and top-k from a steadylm run/checkpoint "
        "or a Hugging Face GPT-2 folder that holds a tokenizer.json.",
    )
    p.add_argument("path", metavar="RUN|CHECKPOINT|HF_FOLDER")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=200, help="new tokens per sample (default 200)")
    p.add_argument("--samples", type=int, default=1, help="number of samples (default 1)")
    p.add_argument(
        "--temperature", type=float, default=0.8, help="softmax temperature (default 0.8)"
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=200,
        help="keep the k most likely tokens; 0 keeps all (default 200)",
    )
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from steadylm.data.tokenizer import Tokenizer
    from steadylm.device import resolve_device
    from steadylm.model.hf import load_model
    from steadylm.model.sampling import generate
    from steadylm.rundir import resolve_checkpoint

    if args.tokens < 1 or args.samples < 1:
        raise SteadyLMError("--tokens and --samples must be >= 1")
    if args.temperature <= 0:
        raise SteadyLMError(f"--temperature: must be > 0, got {args.temperature}")
    src = resolve_checkpoint(Path(args.path))
    tok_path = src / "tokenizer.json"
    if not tok_path.is_file():
        raise SteadyLMError(f"{src}: no tokenizer.json to encode the prompt with")
    tok = Tokenizer.load(tok_path)
    device = resolve_device(args.device, option="--device")
    model = load_model(src, device=device)
    ids = tok.encode(args.prompt) or [tok.eot_id]
    torch.manual_seed(args.seed)
    for i in range(args.samples):
        idx = torch.tensor([ids], device=device)
        out = generate(
            model, idx, args.tokens, temperature=args.temperature, top_k=args.top_k or None
        )
        if args.samples > 1:
            print(f"--- sample {i + 1}")
        print(tok.decode(out[0].tolist()))
    return 0
