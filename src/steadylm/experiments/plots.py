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
from matplotlib.ticker import MaxNLocator

from steadylm.experiments.runs import Run

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
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, color="#666", transform=ax.transAxes)
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


def _band(ax, runs: list[Run], key: str, color, label: str | None, smooth: bool = False, log: bool = False) -> bool:
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
        ("loss", "training loss (smoothed)", dict(smooth=True)),
        ("val_loss", "validation loss", {}),
        ("tev_mean", "μ_TEV", {}),
        ("tev_std", "σ_TEV", {}),
        ("grad_norm", "gradient norm (before clipping)", dict(log=True)),
        ("grad_var_embed", "gradient variance, embedding", dict(log=True)),
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
                loss_ax.scatter(s, [r.at("loss", x) or np.nan for x in s], marker="v", s=28,
                                color=colors[v], edgecolor="k", lw=0.5, zorder=5)
    _rms_panel(axes[6], by_variant, colors)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[7].axis("off")
    if handles:
        axes[7].legend(handles, labels, loc="center", fontsize=9, title="variant (▼ spike)", frameon=False)
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
            mean = np.array([fl["mean"] if fl["mean"] is not None else np.nan for fl in e["final_loss"]])
            sd = np.array([fl["sd"] or 0.0 for fl in e["final_loss"]])
            ax.errorbar(e["lrs"], mean, yerr=sd, marker="o", ms=4, capsize=2, color=colors[e["variant"]],
                        label=e["variant"])
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
                ax.scatter(xs, [ceiling] * len(xs), marker="x", s=40, color=colors[e["variant"]], zorder=5)
            ax.set_ylim(lo, ceiling + 0.05 * (hi - lo))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _log_axes(ax, xs, ys) -> None:
    if _spans_decade(xs):
        ax.set_xscale("log")
    if _spans_decade(ys):
        ax.set_yscale("log")


def tev_gradvar(result: dict[str, Any], meta: dict[str, Run], colors: dict[str, Any]) -> Figure:
    """Across runs at the featured matched step: μ_TEV vs gradient variance and ΔTEV² vs
    Σ lr²·g; and each run's ΔTEV² against its own Σ lr²·g as it trains."""
    fig = Figure(figsize=(16, 4.6))
    a, b, c = fig.subplots(1, 3)
    meta = {name: meta[name] for name in result["trajectories"]}  # the runs that logged g
    depths = sorted({r.depth for r in meta.values()}, key=lambda d: (d is None, d))
    marker = {d: _MARKERS[i % len(_MARKERS)] for i, d in enumerate(depths)}
    pts = result["points"]
    for p in pts:
        r = meta[p["run"]]
        kw = dict(color=colors[r.variant], marker=marker[r.depth], s=30, edgecolor="k", lw=0.4)
        a.scatter(p["grad_var"], p["tev_mean"], **kw)
        b.scatter(p["budget"], p["delta_tev2"], **kw)
    f = result["featured"]
    _log_axes(a, [p["grad_var"] for p in pts], [p["tev_mean"] for p in pts])
    _log_axes(b, [p["budget"] for p in pts], [p["delta_tev2"] for p in pts])
    a.set(xlabel="gradient variance, embedding", ylabel="μ_TEV")
    a.set_title(f"step {result['featured_step']}: Spearman ρ = {_rho(f['rho_tev_mean'])}", fontsize=10)
    b.set(xlabel="Σ lr²·gradient variance", ylabel="ΔTEV²")
    b.set_title(f"step {result['featured_step']}: Spearman ρ = {_rho(f['rho_delta'])}", fontsize=10)
    xs_all, ys_all = [], []
    for name, traj in result["trajectories"].items():
        r = meta[name]
        steps = [s for s in sorted(traj) if traj[s]["budget"] > 0]  # the first reading is (0, 0)
        xs, ys = [traj[s]["budget"] for s in steps], [traj[s]["delta_tev2"] for s in steps]
        c.plot(xs, ys, color=colors[r.variant], lw=1, marker=marker[r.depth], ms=3)
        xs_all += xs
        ys_all += ys
    _log_axes(c, xs_all, ys_all)
    c.set(xlabel="Σ lr²·gradient variance", ylabel="ΔTEV²")
    c.set_title("each run over training", fontsize=10)
    for v, col in colors.items():
        if any(r.variant == v for r in meta.values()):
            c.plot([], [], color=col, label=v)
    for d, m in marker.items():
        c.plot([], [], ls="", marker=m, color="k", label=f"n_layer {d}")
    c.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _rho(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.2f}"


def early_warning(cases: list[dict[str, Any]], window: int, horizon: int) -> Figure:
    """For each spike shown: μ_TEV and gradient norm around it, out-of-range steps marked."""
    fig = Figure(figsize=(14, 2.6 * len(cases)))
    axes = fig.subplots(len(cases), 2, squeeze=False)
    for row, case in zip(axes, cases):
        run, spike, flags = case["run"], case["step"], case["flags"]
        for ax, key, label in zip(row, ("tev_mean", "grad_norm"), ("μ_TEV", "gradient norm")):
            steps, x = run.series(key)
            keep = (steps >= spike - window - horizon) & (steps <= spike + horizon // 2)
            ax.plot(steps[keep], x[keep], color="#333", lw=1)
            f = flags[key][keep] if key in flags else np.zeros(keep.sum(), dtype=bool)
            ax.scatter(steps[keep][f], x[keep][f], color="tab:orange", s=18, zorder=5, label="out of range")
            ax.axvline(spike, color="tab:red", lw=1, ls="--", label="spike")
            ax.axvspan(spike - horizon, spike, color="tab:red", alpha=0.06)
            ax.set_title(f"{run.name}: {label} around the spike at step {spike}", fontsize=9)
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
