"""`steadylm embed`: word embeddings by RO-SGNS, word2vec (gensim) or SVD-SPPMI, scored on the
standard similarity and analogy benchmarks."""

from __future__ import annotations

import argparse

from steadylm.embed.config import METHODS, EmbedConfig, help_of

HELP = """\
Word embeddings from a corpus by one of three methods, all scored by the same SGNS objective
F(X) on the same co-occurrence counts (larger is better) and on WS-353 (whole, similarity,
relatedness), SimLex-999, MEN (Spearman) and the Google and MSR analogies (3CosAdd):

  ro_sgns    Riemannian SGNS (Fonarev et al. 2017): projector-splitting ascent on rank-d X,
             started from svd_sppmi, step by Armijo line search (or a fixed --step)
  sgns       gensim's word2vec skip-gram with negative sampling (SGD), same vocabulary and window
  svd_sppmi  truncated SVD of the shifted positive PMI matrix (Levy & Goldberg 2014)

A flag wins over --set, which wins over --config (an [embed] table), which wins over the defaults.
DIR gets embed.json, vectors.txt (word2vec text), vectors.safetensors (`steadylm tev
DIR/vectors.safetensors` works on it), objective.jsonl/.png, config.toml, provenance.json
and status.json. See docs/embed.md."""


# Flags that set one [embed] key each: (name, type, metavar). Given flags override --config and --set.
_OPTIONS = (
    ("method", str, "|".join(METHODS)), ("dim", int, "D"), ("vocab", int, "N"), ("window", int, "W"),
    ("neg", int, "K"), ("iters", int, "N"), ("step", str, "LAMBDA|auto"), ("epochs", int, "N"),
    ("sample", float, "T"), ("svd_iters", int, "N"), ("seed", int, "S"), ("text_field", str, "NAME"),
    ("device", str, "DEVICE"),
)  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="word embeddings: Riemannian SGNS, word2vec (gensim), SVD-SPPMI",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = EmbedConfig()
    p.add_argument(
        "--out", required=True, metavar="DIR", help="run folder to create (must not hold files)"
    )
    p.add_argument(
        "--corpus", nargs="+", metavar="NAME|PATH", help=f"{help_of('corpus')} (default {d.corpus})"
    )
    for name, typ, meta in _OPTIONS:
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, metavar=meta,
                       help=f"{help_of(name)} (default {getattr(d, name)})")  # fmt: skip
    p.add_argument("--no-line-search", dest="line_search", action="store_false", default=None,
                   help="ro_sgns: keep --step fixed, as the paper does (F may then fall or diverge)")  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="a TOML file with an [embed] table")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="embed.KEY=VALUE",
        help="override one key, e.g. --set embed.dim=200 (repeatable; values are TOML)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.config import toml_value
    from steadylm.embed.config import load_embed_config
    from steadylm.embed.job import run as run_job

    given = {name: getattr(args, name) for name, _, _ in _OPTIONS}
    given |= {"corpus": args.corpus, "line_search": args.line_search}
    flags = [f"embed.{k}={toml_value(v)}" for k, v in given.items() if v is not None]
    cfg = load_embed_config(args.config, [*args.overrides, *flags])
    run_job(cfg, args.out, progress=not args.no_progress)
    return 0
