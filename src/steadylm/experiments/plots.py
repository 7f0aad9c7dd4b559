"""The report's figures. Matplotlib's object API on the Agg canvas: no pyplot, no display, and
no global backend switched under a caller that has its own."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from steadylm.experiments.runs import Run
from steadylm.experiments.spec import short_float
from steadylm.experiments.warning import out_of_range

DPI = 90
_MARKERS = "osD^v<>P*X"


def colors_for(variants: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(variants)}


def save(fig: Figure, path: Path) -> None:
    """PNG with a 256-colour palette: a third of the bytes of full colour for line plots, which
    matters once every figure is embedded in the HTML page."""
    from PIL import Image  # matplotlib's own dependency

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    buf.seek(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buf).convert("RGB").quantize(256).save(path, format="png", optimize=True)


def _blank(ax, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        wrap=True,
        fontsize=9,
        color="#666",
        transform=ax.transAxes,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _stack(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values[seed, step]) on the union of the runs' steps, NaN where a run lacks one."""
    series = [r.series(key) for r in runs]
    steps = np.unique(np.concatenate([s for s, _ in series])) if series else np.zeros(0, dtype=int)
    grid = np.full((len(series), len(steps)), np.nan)
    for i, (s, v) in enumerate(series):
        grid[i, np.searchsorted(steps, s)] = v
    grid[~np.isfinite(grid)] = np.nan
    return steps, grid


def _smooth(v: np.ndarray) -> np.ndarray:
    """Centred moving average over 1% of the points (per-step loss noise hides the trend);
    edges and gaps average over the points that exist."""
    w = max(1, len(v) // 100)
    if w == 1:
        return v
    ok = np.isfinite(v)
    ones = np.ones(w)
    total = np.convolve(np.where(ok, v, 0.0), ones, mode="same")
    count = np.convolve(ok.astype(float), ones, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _band(
    ax, runs: list[Run], key: str, color, label: str | None, smooth: bool = False, log: bool = False
) -> bool:
    steps, grid = _stack(runs, key)
    if not len(steps) or not np.isfinite(grid).any():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps every seed lacks
        mean, lo, hi = np.nanmean(grid, 0), np.nanmin(grid, 0), np.nanmax(grid, 0)
    if smooth:
        mean, lo, hi = _smooth(mean), _smooth(lo), _smooth(hi)
    sparse = len(steps) <= 50  # e.g. evaluations or gradient-variance readings: show the points
    ax.plot(steps, mean, color=color, lw=1.2, label=label, marker="." if sparse else None)
    if len(runs) > 1:
        ax.fill_between(steps, lo, hi, color=color, alpha=0.15, lw=0)
    if log and _spans_decade(mean):
        ax.set_yscale("log")
    return True


def _spans_decade(values) -> bool:
    """A log axis helps only for positive values spread over at least a factor of ten."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return bool(len(v)) and v.min() > 0 and v.max() >= 10 * v.min()


def curves(by_variant: dict[str, list[Run]], colors: dict[str, Any], title: str) -> Figure:
    """Training and validation loss, μ/σ_TEV, gradient norm, gradient variance and the final
    residual RMS per layer: one line per variant (mean over seeds, band from min to max)."""
    fig = Figure(figsize=(16, 7.2))
    axes = fig.subplots(2, 4).ravel()
    panels = [
        ("loss", "training loss (smoothed)", {"smooth": True}),
        ("val_loss", "validation loss", {}),
        ("tev_mean", "μ_TEV", {}),
        ("tev_std", "σ_TEV", {}),
        ("grad_norm", "gradient norm (before clipping)", {"log": True}),
        ("grad_var_embed", "gradient variance, embedding", {"log": True}),
    ]
    for ax, (key, label, opts) in zip(axes, panels):
        drawn = [_band(ax, runs, key, colors[v], v, **opts) for v, runs in by_variant.items()]
        if any(drawn):
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("step", fontsize=9)
        else:
            ax.set_title(label, fontsize=10)
            _blank(ax, f"not logged\n({key})")
    loss_ax = axes[0]
    for v, runs in by_variant.items():  # spikes on the loss panel, at the spiking run's loss
        for r in runs:
            s = r.event_steps("spike")
            if s:
                loss_ax.scatter(
                    s,
                    [r.at("loss", x) or np.nan for x in s],
                    marker="v",
                    s=28,
                    color=colors[v],
                    edgecolor="k",
                    lw=0.5,
                    zorder=5,
                )
    _rms_panel(axes[6], by_variant, colors)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[7].axis("off")
    if handles:
        axes[7].legend(
            handles, labels, loc="center", fontsize=9, title="variant (▼ spike)", frameon=False
        )
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def _rms_panel(ax, by_variant: dict[str, list[Run]], colors: dict[str, Any]) -> None:
    ax.set_title("residual RMS per layer, last reading", fontsize=10)
    drawn = False
    for v, runs in by_variant.items():
        profiles = []
        for r in runs:
            keys = r.layer_keys("rms")
            row = next((row for row in reversed(r.rows) if keys and keys[0] in row), None)
            if row is not None:
                profiles.append([float(row[k]) if k in row else np.nan for k in keys])
        if profiles and len({len(p) for p in profiles}) == 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.array(profiles, dtype=float), 0)
            ax.plot(np.arange(len(mean)), mean, marker=".", color=colors[v], lw=1.2)
            drawn = True
    if drawn:
        ax.set_xlabel("layer", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if _spans_decade([y for line in ax.get_lines() for y in line.get_ydata()]):
            ax.set_yscale("log")
    else:
        _blank(ax, "not logged\n(rms/h.N; monitor.act_every)")


def lr_sensitivity(entries: list[dict[str, Any]], colors: dict[str, Any]) -> Figure:
    """Final loss against learning rate, one panel per depth; diverged runs as ✕ on the top edge."""
    depths = sorted({e["depth"] for e in entries}, key=lambda d: (d is None, d))
    fig = Figure(figsize=(min(5 * len(depths), 16), 4))
    axes = np.atleast_1d(fig.subplots(1, len(depths), squeeze=False).ravel())
    for ax, depth in zip(axes, depths):
        tops = []
        for e in (e for e in entries if e["depth"] == depth):
            mean = np.array(
                [fl["mean"] if fl["mean"] is not None else np.nan for fl in e["final_loss"]]
            )
            sd = np.array([fl["sd"] or 0.0 for fl in e["final_loss"]])
            ax.errorbar(
                e["lrs"],
                mean,
                yerr=sd,
                marker="o",
                ms=4,
                capsize=2,
                color=colors[e["variant"]],
                label=e["variant"],
            )
            tops += list(mean[np.isfinite(mean)] + sd[np.isfinite(mean)])
        ax.set_xscale("log")
        ax.set_xlabel("learning rate", fontsize=9)
        ax.set_ylabel("final loss", fontsize=9)
        ax.set_title(f"n_layer = {depth}", fontsize=10)
        if tops:
            lo, hi = ax.get_ylim()
            ceiling = hi + 0.05 * (hi - lo)
            for e in (e for e in entries if e["depth"] == depth):
                xs = [lr for lr, d in zip(e["lrs"], e["diverged"]) if d]
                ax.scatter(
                    xs, [ceiling] * len(xs), marker="x", s=40, color=colors[e["variant"]], zorder=5
                )
            ax.set_ylim(lo, ceiling + 0.05 * (hi - lo))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_vs_size(
    groups: list[dict[str, Any]],
    summaries: list[dict[str, Any]],
    fronts: dict[tuple, list[str]],
    colors: dict[str, Any],
) -> Figure:
    """Final validation loss against embedding parameters, one panel per (depth, lr) of
    `fronts`: every seed as a dot, mean ± sd as a bar, the Pareto front as a dashed line."""
    fig = Figure(figsize=(min(5.5 * len(fronts), 16), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(fronts), squeeze=False).ravel())
    for ax, ((depth, lr), front) in zip(axes, fronts.items()):
        cell = [g for g in groups if g["depth"] == depth and g["lr"] == lr]
        for g in cell:
            if g["embedding_parameters"] is None:
                continue
            x, color = g["embedding_parameters"], colors[g["variant"]]
            seeds = [
                s["final_val_loss"]
                for s in summaries
                if s["depth"] == depth and s["lr"] == lr and s["variant"] == g["variant"]
                and s["final_val_loss"] is not None
            ]  # fmt: skip
            ax.scatter([x] * len(seeds), seeds, s=12, color=color, alpha=0.6, zorder=3)
            mean, sd = g["final_val_loss"]["mean"], g["final_val_loss"]["sd"] or 0.0
            if mean is not None:
                ax.errorbar(x, mean, yerr=sd, marker="o", ms=6, capsize=3, color=color,
                            label=g["variant"], zorder=4)  # fmt: skip
        on_front = sorted(
            (g for g in cell if g["variant"] in front), key=lambda g: g["embedding_parameters"]
        )
        ax.plot(
            [g["embedding_parameters"] for g in on_front],
            [g["final_val_loss"]["mean"] for g in on_front],
            ls="--",
            color="k",
            lw=1,
            label="Pareto front",
            zorder=2,
        )
        ax.set_xscale("log")
        # under a decade of span, matplotlib labels every minor tick and they overlap
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("embedding parameters", fontsize=9)
        ax.set_ylabel("final validation loss", fontsize=9)
        ax.set_title(f"n_layer = {depth}, lr = {short_float(lr) if lr else '—'}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _log_axes(ax, xs, ys) -> None:
    if _spans_decade(xs):
        ax.set_xscale("log")
    if _spans_decade(ys):
        ax.set_yscale("log")


def _depth_markers(depths) -> dict[Any, str]:
    return {
        d: _MARKERS[i % len(_MARKERS)]
        for i, d in enumerate(sorted(set(depths), key=lambda d: (d is None, d)))
    }


def delta_steps(entries: list[dict[str, Any]], colors: dict[str, Any]) -> Figure:
    """Seed-paired Δ against step with its confidence band: a panel per learning rate, a colour per
    variant, a line style per depth."""
    lrs = sorted({e["key"].lr for e in entries}, key=lambda x: (x is None, x))
    depths = sorted({e["key"].depth for e in entries}, key=lambda d: (d is None, d))
    styles = {d: ("-", "--", ":", "-.")[i % 4] for i, d in enumerate(depths)}
    fig = Figure(figsize=(min(5 * len(lrs), 16), 4))
    axes = fig.subplots(1, len(lrs), squeeze=False).ravel()
    for ax, lr in zip(axes, lrs):
        for e in (e for e in entries if e["key"].lr == lr):
            mean = np.array([x.mean for x in e["estimates"]])
            lo = np.array([np.nan if x.lo is None else x.lo for x in e["estimates"]])
            hi = np.array([np.nan if x.hi is None else x.hi for x in e["estimates"]])
            color = colors[e["key"].variant]
            ax.plot(
                e["steps"],
                mean,
                color=color,
                ls=styles[e["key"].depth],
                marker=".",
                label=f"{e['key'].variant}, n_layer {e['key'].depth}",
            )
            ax.fill_between(e["steps"], lo, hi, color=color, alpha=0.12, lw=0)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(f"lr = {'—' if lr is None else short_float(lr)}", fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel("Δ validation loss (nats)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def tev_gradvar(result: dict[str, Any], colors: dict[str, Any]) -> Figure:
    """μ_TEV against the embedding's gradient variance at one step, one point per run, labelled
    by learning rate."""
    fig = Figure(figsize=(7, 4.6))
    ax = fig.subplots()
    pts = [p for p in result["points"].values() if np.isfinite(p.get("tev_mean", np.nan))]
    marker = _depth_markers(p["depth"] for p in pts)
    for p in pts:
        ax.scatter(
            p["grad_var"],
            p["tev_mean"],
            color=colors[p["variant"]],
            marker=marker[p["depth"]],
            s=30,
            edgecolor="k",
            lw=0.4,
        )
    for lr in {p["lr"] for p in pts}:
        mine = [p for p in pts if p["lr"] == lr]
        ax.annotate(
            f"lr {'—' if lr is None else short_float(lr)}",
            (
                float(np.median([p["grad_var"] for p in mine])),
                float(np.max([p["tev_mean"] for p in mine])),
            ),
            fontsize=8,
            color="#444",
            ha="center",
            va="bottom",
        )
    _log_axes(ax, [p["grad_var"] for p in pts], [p["tev_mean"] for p in pts])
    ax.set(xlabel="gradient variance, embedding", ylabel="μ_TEV")
    s = result["signals"].get("tev_mean")
    if s:
        ax.set_title(
            f"step {result['step']}: ρ within groups {_rho(s['within'].rho)}, "
            f"across all {_rho(s['across'].rho)}",
            fontsize=10,
        )
    for v in dict.fromkeys(p["variant"] for p in pts):
        ax.plot([], [], ls="", marker="o", color=colors[v], label=v)
    for d, m in marker.items():
        ax.plot([], [], ls="", marker=m, color="k", label=f"n_layer {d}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _rho(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.2f}"


def adam_references(result: dict[str, Any], meta: dict[str, Run], colors: dict[str, Any]) -> Figure:
    """ΔTEV²/Σlr² against (Σlr)²/Σlr² per run: 1 is the pure-noise reference, the diagonal the
    pure-drift one."""
    fig = Figure(figsize=(7, 4.6))
    ax = fig.subplots()
    marker = _depth_markers(meta[name].depth for name in result["trajectories"])
    xs_all = []
    for name, t in result["trajectories"].items():
        ok = (t["noise"] > 0) & (t["delta_tev2"] > 0) & (t["drift"] > 0)
        if not ok.any():
            continue
        x, y = t["drift"][ok] / t["noise"][ok], t["delta_tev2"][ok] / t["noise"][ok]
        r = meta[name]
        ax.plot(x, y, color=colors[r.variant], lw=0.8, alpha=0.7)
        ax.scatter(
            x[-1:],
            y[-1:],
            color=colors[r.variant],
            marker=marker[r.depth],
            s=24,
            edgecolor="k",
            lw=0.4,
            zorder=5,
        )
        xs_all += x.tolist()
    if xs_all:
        lo, hi = min(xs_all), max(xs_all)
        ax.plot([lo, hi], [1, 1], color="k", ls="--", lw=0.8, label="pure noise: Σlr²")
        ax.plot([lo, hi], [lo, hi], color="k", ls=":", lw=0.8, label="pure drift: (Σlr)²")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set(xlabel="(Σlr)² / Σlr²", ylabel="ΔTEV² / Σlr²")
    for v, col in colors.items():
        if any(meta[n].variant == v for n in result["trajectories"]):
            ax.plot([], [], color=col, label=v)
    for d, m in marker.items():
        ax.plot([], [], ls="", marker=m, color="k", label=f"n_layer {d}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def early_warning(cases: list[tuple[Run, int]], window: int, k: float, horizon: int) -> Figure:
    """For each event shown: the training loss, μ_TEV and the gradient norm around it, with the
    out-of-range steps of the last two marked."""
    fig = Figure(figsize=(15, 2.6 * len(cases)))
    axes = fig.subplots(len(cases), 3, squeeze=False)
    for row, (run, event) in zip(axes, cases):
        for ax, key, label in zip(
            row, ("loss", "tev_mean", "grad_norm"), ("training loss", "μ_TEV", "gradient norm")
        ):
            steps, x = run.series(key)
            keep = (steps >= event - window - horizon) & (steps <= event + horizon // 2)
            ax.plot(steps[keep], x[keep], color="#333", lw=1)
            if key != "loss":
                f = out_of_range(x, window, k)[keep]
                ax.scatter(
                    steps[keep][f],
                    x[keep][f],
                    color="tab:orange",
                    s=18,
                    zorder=5,
                    label="out of range",
                )
            ax.axvline(event, color="tab:red", lw=1, ls="--", label="event")
            ax.axvspan(event - horizon, event, color="tab:red", alpha=0.06)
            ax.set_title(f"{run.name}: {label} around the event at step {event}", fontsize=9)
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
