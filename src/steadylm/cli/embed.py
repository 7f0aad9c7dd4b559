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

DIR gets embed.json, vectors.txt (word2vec text), vectors.safetensors (`steadylm tev
DIR/vectors.safetensors` works on it), objective.jsonl/.png, config.toml, provenance.json
and status.json. See docs/embed.md."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="word embeddings: Riemannian SGNS, word2vec (gensim), SVD-SPPMI",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = EmbedConfig()
    p.add_argument("--method", default=d.method, metavar="|".join(METHODS), help=help_of("method"))
    p.add_argument(
        "--dim", type=int, default=d.dim, metavar="D", help=f"{help_of('dim')} (default {d.dim})"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="run folder to create (must not hold files)"
    )
    p.add_argument(
        "--corpus", nargs="+", default=d.corpus, metavar="default|PATH", help=help_of("corpus")
    )
    p.add_argument("--text-field", default=d.text_field, metavar="NAME", help=help_of("text_field"))
    for name, typ, meta in (("vocab", int, "N"), ("window", int, "W"), ("neg", int, "K"), ("iters", int, "N"),
                            ("epochs", int, "N"), ("sample", float, "T"), ("svd_iters", int, "N"),
                            ("seed", int, "S")):  # fmt: skip
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=getattr(d, name), metavar=meta,
                       help=f"{help_of(name)} (default {getattr(d, name)})")  # fmt: skip
    p.add_argument(
        "--step",
        default=d.step,
        metavar="LAMBDA|auto",
        help=f"{help_of('step')} (default {d.step})",
    )
    p.add_argument("--no-line-search", dest="line_search", action="store_false",
                   help="ro_sgns: keep --step fixed, as the paper does (F may then fall or diverge)")  # fmt: skip
    p.add_argument("--device", default=d.device, metavar="DEVICE", help=help_of("device"))
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.embed.job import run as run_job

    cfg = EmbedConfig(
        method=args.method, dim=args.dim, vocab=args.vocab, window=args.window, neg=args.neg,
        corpus=list(args.corpus), text_field=args.text_field, iters=args.iters, step=args.step,
        line_search=args.line_search, epochs=args.epochs, sample=args.sample, svd_iters=args.svd_iters,
        seed=args.seed, device=args.device,
    )  # fmt: skip
    run_job(cfg, args.out, progress=not args.no_progress)
    return 0
