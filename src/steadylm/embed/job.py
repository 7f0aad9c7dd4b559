"""The `steadylm embed` job: corpus -> counts -> one method -> scores -> a run folder.

The run folder is filled under a temporary name and renamed when complete, so a failed or
interrupted run leaves nothing behind:

    DIR/config.toml         the resolved options ([embed])
    DIR/provenance.json     steadylm and torch versions, git hash, device, threads, corpus size, peak memory
    DIR/embed.json          method dim vocab objective ws353 ws353_sim ws353_rel simlex999 men
                            google_analogy msr_analogy oov, and details (CIs, coverage, geometry)
    DIR/objective.jsonl     F per iteration (ro_sgns), per epoch (sgns), or once (svd_sppmi)
    DIR/objective.png       the same as a plot
    DIR/vectors.txt         word2vec text format: "N d", then "word v1 ... vd" per line
    DIR/vectors.safetensors word_embeddings.weight (N, d) and context_embeddings.weight (N, d)
    DIR/vocab.txt           the N words, row order of both files
    DIR/status.json         {"status": "finished", ...}
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from steadylm.data.corpus import read_corpus
from steadylm.embed import benchmarks
from steadylm.embed.config import EmbedConfig
from steadylm.embed.counts import Counts, count
from steadylm.embed.objective import sgns_objective
from steadylm.embed.ro_sgns import Factors, embeddings, ro_sgns
from steadylm.embed.sgns import sgns
from steadylm.embed.svd_sppmi import svd_sppmi
from steadylm.errors import SteadyLMError
from steadylm.fsutil import atomic_dir, atomic_write
from steadylm.provenance import provenance

SCORE_KEYS = (
    "ws353",
    "ws353_sim",
    "ws353_rel",
    "simlex999",
    "men",
    "google_analogy",
    "msr_analogy",
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SteadyLMError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SteadyLMError(
            f"--device {name}: CUDA is not available here; use --device cpu or auto"
        )
    return device


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes); on CUDA, the
    device's peak allocation is reported separately."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def train(
    cfg: EmbedConfig, counts: Counts, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """W (N, d), C (N, d) and the objective history of `cfg.method` on `counts`."""
    history: list[dict] = []
    if cfg.method == "sgns":

        def on_epoch(epoch: int, W: torch.Tensor, C: torch.Tensor) -> None:
            history.append({"iter": epoch, "F": sgns_objective(counts, W, C, cfg.neg).F})

        W, C = sgns(counts, cfg.dim, cfg.neg, cfg.epochs, cfg.sample, cfg.seed, progress, on_epoch)
        return W, C, history
    U, s, V = svd_sppmi(counts, cfg.dim, cfg.neg, cfg.svd_iters, cfg.seed)
    if cfg.method == "svd_sppmi":
        history.append({"iter": 0, "F": sgns_objective(counts, U * s, V, cfg.neg).F})
        root = s.sqrt()
        return U * root, V * root, history
    bar = tqdm(total=cfg.iters, desc="ro_sgns", unit="iter", disable=not progress)

    def on_iter(row: dict) -> None:
        if row["iter"]:
            bar.update(1)
        bar.set_postfix(F=f"{row['F']:.4e}", lam=f"{row['lambda'] or 0:.2e}")

    step = None if cfg.step == "auto" else float(cfg.step)
    x, history = ro_sgns(
        counts, Factors(U, torch.diag(s), V), cfg.neg, cfg.iters, step, cfg.line_search, on_iter
    )
    bar.close()
    W, C = embeddings(x)
    return W, C, history


def geometry(W: torch.Tensor) -> dict:
    """TEV, anisotropy, mean cosine and TwoNN intrinsic dimension of the word vectors."""
    from steadylm.analysis.geometry import anisotropy, mean_cosine, twonn_dimension
    from steadylm.monitor.tev import tev_per_row

    tev = tev_per_row(W)
    X = W.cpu().numpy()
    return {
        "mu_tev": float(tev.mean()),
        "sigma_tev": float(tev.std(correction=0)),
        "anisotropy": anisotropy(X),
        "mean_cosine": mean_cosine(X),
        "twonn_id": twonn_dimension(X),
    }


def run(
    cfg: EmbedConfig, out: Path | str, progress: bool = True, log: Callable[[str], None] = print
) -> dict:
    """Run the job into `out` (which must not exist or be empty) and return embed.json's content."""
    cfg.validate()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SteadyLMError(f"--out {out}: exists and is not an empty folder; choose a new folder")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    docs = read_corpus(cfg.corpus, cfg.text_field, progress)
    counts = count(docs, cfg.vocab, cfg.window, device, progress)
    del docs
    bench = (
        benchmarks.load_benchmarks()
    )  # before training: a missing archive should stop the run early
    t_counts = time.perf_counter() - t0
    log(f"corpus     {counts.n_words:,} words, vocabulary {len(counts.words):,}, {counts.total:,.0f} pairs "
        f"(window {cfg.window}) in {t_counts:.1f} s")  # fmt: skip

    t1 = time.perf_counter()
    W, C, history = train(cfg, counts, progress)
    t_train = time.perf_counter() - t1
    W, C = W.float().cpu().contiguous(), C.float().cpu().contiguous()
    scores = benchmarks.evaluate(W, counts.words, bench)
    geo = geometry(W)
    peak = peak_memory_mb(device)
    summary = _summary(cfg, counts, history, scores, geo, (t_counts, t_train), peak)
    if device.type == "cuda":
        summary["peak_cuda_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / (1 << 20), 1)
    _write_run(out, cfg, device, counts, summary, history, W, C, t0)
    log(format_summary(summary, out))
    return summary


def _summary(
    cfg: EmbedConfig,
    counts: Counts,
    history: list[dict],
    scores: dict,
    geo: dict,
    seconds: tuple[float, float],
    peak: float,
) -> dict:
    """embed.json's content: the method and its settings, the objective, every benchmark score
    with its coverage, the vectors' geometry, and the costs (`seconds`: counting, training)."""
    t_counts, t_train = seconds
    return {
        "method": cfg.method,
        "dim": cfg.dim,
        "vocab": len(counts.words),
        "objective": history[-1]["F"],
        **{k: scores[k].get("spearman", scores[k].get("accuracy")) for k in SCORE_KEYS},
        "oov": {k: scores[k]["oov"] for k in SCORE_KEYS},
        "covered": {k: scores[k]["n"] for k in SCORE_KEYS},
        "ci95": {k: scores[k]["ci95"] for k in SCORE_KEYS if "ci95" in scores[k]},
        "geometry": geo,
        "seed": cfg.seed,
        "window": cfg.window,
        "neg": cfg.neg,
        "corpus_words": counts.n_words,
        "pairs": counts.total,
        "iterations": len(history) - 1,
        "stopped_early": history[-1].get("stopped"),
        "seconds": {"counts": round(t_counts, 2), "train": round(t_train, 2)},
        "peak_mem_mb": round(peak, 1),
    }


def _write_run(
    out: Path,
    cfg: EmbedConfig,
    device: torch.device,
    counts: Counts,
    summary: dict,
    history: list[dict],
    W: torch.Tensor,
    C: torch.Tensor,
    t0: float,
) -> None:
    """Write the finished run into `out` at once: config, provenance, embed.json, the objective
    (JSONL and plot), the vectors and a finished status."""
    with atomic_dir(out) as tmp:
        _write_text(tmp / "config.toml", cfg.to_toml())
        _write_json(tmp / "provenance.json", _provenance(device, counts))
        _write_json(tmp / "embed.json", summary)
        _write_text(
            tmp / "objective.jsonl", "".join(json.dumps(_json_safe(row)) + "\n" for row in history)
        )
        _plot_objective(history, cfg.method, tmp / "objective.png")
        _write_vectors(tmp, counts.words, W, C)
        _write_json(
            tmp / "status.json",
            {"status": "finished", "seconds": round(time.perf_counter() - t0, 2)},
        )


def format_summary(s: dict, out: Path) -> str:
    def f(key: str) -> str:
        v = s[key]
        return "n/a" if v is None else f"{v:.3f}"

    sim = "  ".join(f"{k} {f(k)} (n={s['covered'][k]})" for k in SCORE_KEYS[:5])
    ana = "  ".join(f"{k} {f(k)} (n={s['covered'][k]})" for k in SCORE_KEYS[5:])
    g = s["geometry"]
    return "\n".join([
        f"method     {s['method']}  d={s['dim']}  vocabulary {s['vocab']:,}",
        f"objective  F(X) = {s['objective']:.5e}" + _after(s),
        f"similarity {sim}",
        f"analogy    {ana}",
        (f"geometry   mu_TEV {g['mu_tev']:.4f}  sigma_TEV {g['sigma_tev']:.4f}  "
         f"anisotropy {g['anisotropy']:.3f}  TwoNN ID {g['twonn_id']:.1f}"),
        f"time       counts {s['seconds']['counts']:.1f} s, {s['method']} {s['seconds']['train']:.1f} s",
        f"peak mem   {s['peak_mem_mb']:,.0f} MB (process RSS)",
        f"run        {out}",
    ])  # fmt: skip


def _after(s: dict) -> str:
    unit = {"ro_sgns": "iterations", "sgns": "epochs"}.get(s["method"])
    if unit is None:
        return ""
    stopped = f", stopped early: {s['stopped_early']}" if s["stopped_early"] else ""
    return f" after {s['iterations']} {unit}{stopped}"


def _provenance(device: torch.device, counts: Counts) -> dict:
    info = provenance(device, corpus_words=counts.n_words)
    try:
        import gensim  # type: ignore[import-untyped]  # gensim ships no type stubs

        info["gensim_version"] = gensim.__version__
    except ImportError:
        pass
    return info


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def _json_safe(obj):
    """NaN (e.g. the TwoNN dimension of all-equal vectors) as null: JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _write_json(path: Path, obj: dict) -> None:
    _write_text(path, json.dumps(_json_safe(obj), indent=1, allow_nan=False) + "\n")


def _write_vectors(folder: Path, words: list[str], W: torch.Tensor, C: torch.Tensor) -> None:
    from safetensors.torch import save_file

    lines = [f"{len(words)} {W.shape[1]}\n"]
    lines += [
        w + " " + " ".join(f"{v:.6g}" for v in row) + "\n" for w, row in zip(words, W.tolist())
    ]
    _write_text(folder / "vectors.txt", "".join(lines))
    _write_text(folder / "vocab.txt", "".join(w + "\n" for w in words))
    # The loader of `steadylm tev` finds "word_embeddings.weight" by name (BERT's name for it).
    save_file({"word_embeddings.weight": W, "context_embeddings.weight": C}, str(folder / "vectors.safetensors"),
              metadata={"format": "pt", "words": "vocab.txt"})  # fmt: skip


def _plot_objective(history: list[dict], method: str, path: Path) -> None:
    from matplotlib.figure import Figure

    from steadylm.experiments.plots import save

    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.add_subplot()
    x = [row["iter"] for row in history]
    y = [row["F"] for row in history]
    ax.plot(x, y, marker="o", markersize=3)
    ax.set_xlabel({"sgns": "epoch", "ro_sgns": "iteration"}.get(method, "(one shot)"))
    ax.set_ylabel("SGNS objective F(X)")
    ax.set_title(f"{method}: objective on the shared counts (larger is better)", fontsize=9)
    ax.grid(alpha=0.3)
    save(fig, path)
