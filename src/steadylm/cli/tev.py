"""`steadylm tev PATH...`: token-embedding variability of any checkpoint."""

from __future__ import annotations

import argparse
import json
import sys

HELP = """\
Token Embedding Variability of a checkpoint: TEV_i is the population std of embedding row i
across the hidden dimension; mu_TEV and sigma_TEV are the mean and population std of TEV_i
over the real vocabulary rows (padding rows left out), in fp32. Low mu/sigma_TEV go with stable
pre-training (Chung et al., EMNLP 2024).

PATH is a steadylm run folder (its latest verified checkpoint), a steadylm checkpoint folder,
a Hugging Face folder (config.json + *.safetensors or pytorch_model.bin), a .safetensors file
(the embedding found by name, or --tensor), or a .gguf file (only token_embd.weight is read and
dequantised). Several PATHs give a comparison table."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tev",
        help="TEV of a checkpoint's token embedding (ours, Hugging Face, safetensors, GGUF)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint(s) to inspect")
    p.add_argument(
        "--json", action="store_true", help="print JSON: one object per PATH (a list for several)"
    )
    p.add_argument(
        "--tensor", metavar="NAME", help="the embedding tensor's name, when it is not found by name"
    )
    p.add_argument(
        "--top",
        type=int,
        default=0,
        metavar="K",
        help="list the K most and K least variable tokens",
    )
    p.add_argument("--bins", type=int, default=12, metavar="N", help="histogram bins (default 12)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from steadylm.errors import SteadyLMError

    if args.top < 0 or args.bins < 1:
        raise SteadyLMError(
            f"--top must be >= 0 and --bins >= 1 (got --top {args.top}, --bins {args.bins})"
        )
    results = [inspect(path, args.tensor, args.top, args.bins) for path in args.paths]
    out = sys.stdout
    if args.json:
        json.dump(results[0] if len(results) == 1 else results, out, indent=1)
        out.write("\n")
    elif len(results) == 1:
        out.write(format_one(results[0]))
    else:
        out.write(format_table(results))
        for r in results:
            if r.get("top"):
                out.write(f"\n{r['path']}\n{format_top(r['top'])}")
    return 0


def inspect(path: str, tensor: str | None, top: int, bins: int) -> dict:
    """TEV figures of one checkpoint, as the JSON object `--json` prints."""
    from steadylm.analysis.loaders import load_embedding
    from steadylm.monitor.tev import tev_histogram, tev_per_row

    emb = load_embedding(path, tensor)
    tev = tev_per_row(emb.weight, emb.vocab_size)
    counts, edges = tev_histogram(tev, bins)
    result = {
        "path": str(path),
        "format": emb.format,
        "model": emb.model,
        "step": emb.step,
        "checkpoint": str(emb.checkpoint) if emb.checkpoint else None,
        "tensor": emb.tensor,
        "dtype": emb.dtype,
        "rows": emb.rows,
        "vocab_size": emb.vocab_size,
        "vocab_note": emb.vocab_note,
        "d_model": emb.d_model,
        "mu_tev": tev.mean().item(),
        "sigma_tev": tev.std(correction=0).item(),
        "min_tev": tev.min().item(),
        "max_tev": tev.max().item(),
        "tokenizer": emb.decode is not None,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }
    if top:
        k = min(top, emb.vocab_size)
        order = tev.argsort(descending=True)

        def entries(ids):
            return [
                {"id": i, "tev": tev[i].item(), "token": emb.decode(i) if emb.decode else None}
                for i in ids.tolist()
            ]

        result["top"] = {"most": entries(order[:k]), "least": entries(order.flip(0)[:k])}
    return result


def format_one(r: dict) -> str:
    where = r["format"] + (f" ({r['model']})" if r["model"] else "")
    if r["step"] is not None:
        where += f", step {r['step']}"
    lines = [
        r["path"],
        *(
            [f"  checkpoint  {r['checkpoint']}"]
            if r["checkpoint"] and r["checkpoint"] != r["path"]
            else []
        ),
        f"  format      {where}",
        f"  tensor      {r['tensor']}  [{r['dtype']}, read as fp32]",
        f"  shape       {r['rows']} x {r['d_model']} (rows x d_model)",
        f"  vocab rows  {r['vocab_size']} ({r['vocab_note']})",
        f"  mu_TEV      {r['mu_tev']:.6g}",
        f"  sigma_TEV   {r['sigma_tev']:.6g}",
        f"  range       {r['min_tev']:.6g} .. {r['max_tev']:.6g}",
        "",
        f"TEV_i over {r['vocab_size']} rows:",
        format_histogram(r["histogram"]),
    ]
    if r.get("top"):
        lines += ["", format_top(r["top"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def format_histogram(h: dict, width: int = 40) -> str:
    edges, counts = h["edges"], h["counts"]
    peak = max(counts) or 1
    lo = [f"{e:.4g}" for e in edges[:-1]]
    hi = [f"{e:.4g}" for e in edges[1:]]
    wl, wh, wc = max(map(len, lo)), max(map(len, hi)), len(str(peak))
    rows = []
    for a, b, c in zip(lo, hi, counts, strict=True):
        bar = "#" * round(width * c / peak) if c else ""
        rows.append(f"  {a:>{wl}} - {b:<{wh}}  {c:>{wc}}  {bar}".rstrip())
    return "\n".join(rows)


def format_top(top: dict) -> str:
    out = []
    wid = max(len(str(e["id"])) for e in top["most"] + top["least"])
    for title, key in (("most variable", "most"), ("least variable", "least")):
        out.append(f"{len(top[key])} {title} tokens (id, TEV_i, token):")
        for e in top[key]:
            token = "" if e["token"] is None else repr(e["token"])
            out.append(f"  {e['id']:>{wid}}  {e['tev']:<10.6g}  {token}".rstrip())
    return "\n".join(out) + "\n"


def format_table(results: list[dict]) -> str:
    header = ["path", "format", "tensor", "dtype", "vocab", "d_model", "mu_TEV", "sigma_TEV"]
    rows = [
        [
            r["path"],
            r["format"],
            r["tensor"],
            r["dtype"],
            str(r["vocab_size"]),
            str(r["d_model"]),
            f"{r['mu_tev']:.6g}",
            f"{r['sigma_tev']:.6g}",
        ]
        for r in results
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    numeric = {4, 5, 6, 7}

    def line(cells):
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)]) + "\n"
