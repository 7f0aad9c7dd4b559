"""Render geometry profiles: a per-layer text table, a Markdown table, and matplotlib figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

from steadylm.analysis.profile import BLOCK_KEYS, LAYER_KEYS
from steadylm.jsonsafe import json_safe

# Column headers of the table, in LAYER_KEYS + BLOCK_KEYS order.
_HEADERS = ("aniso", "mean_cos", "ID", "lin", "lin_nores", "lin_ho", "nores_ho", "norm_ratio")


def _cell(value) -> str:
    if value is None:
        return "-"
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}"


def header_lines(profile: dict) -> list[str]:
    step = f", step {profile['step']}" if profile.get("step") is not None else ""
    kind = "decoder (causal)" if profile["causal"] else "encoder (bidirectional)"
    lines = [
        f"{profile['path']}  [{profile['format']}, {profile['architecture']}, {kind}, "
        f"{profile['n_layer']} blocks{step}]",
        f"{profile['n_tokens']} distinct tokens from {profile['sequences']} sequences, d = {profile['d_model']}, "
        f"--drop-first {profile['drop_first']}; chance linearity d/n = {profile['chance_linearity']:.4f}",
        f"hidden states: {profile['hidden_states']}",
    ]
    if profile.get("note"):
        lines.append(f"note: {profile['note']}")
    return lines


def table_rows(profile: dict) -> list[list[str]]:
    return [
        [str(r["layer"])] + [_cell(r.get(k)) for k in LAYER_KEYS + BLOCK_KEYS]
        for r in profile["layers"]
    ]


def format_table(profile: dict) -> str:
    """Human output: a header, then one row per hidden state (block figures are for l−1 -> l)."""
    rows = [["layer", *_HEADERS]] + table_rows(profile)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(header_lines(profile) + [""] + body) + "\n"


def markdown_table(profile: dict) -> str:
    head = ["layer", *_HEADERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(profile)]
    notes = "\n".join(f"- {line}" for line in header_lines(profile))
    legend = (
        "aniso = σ₁²/Σσᵢ² of centred states; mean_cos = mean pairwise cosine; ID = TwoNN intrinsic "
        "dimension; lin / lin_nores = linearity of block l−1 → l with / without the residual "
        "(in-sample); lin_ho / nores_ho = the same fitted on half the tokens, scored on the other "
        "half; norm_ratio = mean ‖h_l − h_{l−1}‖/‖h_{l−1}‖."
    )
    return f"{notes}\n\n" + "\n".join(lines) + f"\n\n{legend}\n"


def plot_profile(profile: dict, path: Path) -> None:
    """Four panels against layer: anisotropy and mean cosine; ID; linearity; norm ratio."""
    plt = _pyplot()
    layers = [r["layer"] for r in profile["layers"]]
    blocks = layers[1:]

    def col(key, rows=profile["layers"]):
        return [r.get(key, float("nan")) for r in rows]

    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5))
    ax[0, 0].plot(layers, col("anisotropy"), "o-", label="anisotropy σ₁²/Σσᵢ²")
    ax[0, 0].plot(layers, col("mean_cosine"), "s--", label="mean pairwise cosine")
    ax[0, 0].set(
        title="Anisotropy", xlabel="hidden state", ylim=(min(0, *col("mean_cosine")) - 0.02, 1.02)
    )
    ax[0, 1].plot(layers, col("intrinsic_dim"), "o-")
    ax[0, 1].set(title="Intrinsic dimension (TwoNN)", xlabel="hidden state")
    rows = profile["layers"][1:]
    for key, style in (
        ("linearity", "o-"),
        ("linearity_no_residual", "s-"),
        ("linearity_heldout", "o:"),
        ("linearity_no_residual_heldout", "s:"),
    ):
        ax[1, 0].plot(blocks, col(key, rows), style, label=key.replace("_", " "))
    ax[1, 0].axhline(
        profile["chance_linearity"],
        color="grey",
        lw=1,
        label=f"chance d/n = {profile['chance_linearity']:.3f}",
    )
    ax[1, 0].set(title="Linearity of block l−1 → l", xlabel="block output (hidden state l)")
    ax[1, 1].plot(blocks, col("norm_ratio", rows), "o-")
    ax[1, 1].set(
        title="Norm ratio ‖h_l − h_{l−1}‖/‖h_{l−1}‖",
        xlabel="block output (hidden state l)",
        yscale="log",
    )
    for a in (ax[0, 0], ax[1, 0]):
        a.legend(fontsize=8)
    for a in ax.flat:
        a.grid(alpha=0.3)
    fig.suptitle(
        f"{Path(profile['path']).name}: {profile['n_tokens']} tokens, d = {profile['d_model']}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_over_training(result: dict, path: Path) -> None:
    """One panel per figure, against step (log scale), one line per hidden state coloured by depth."""
    plt = _pyplot()
    ckpts = result["checkpoints"]
    steps = [c["step"] for c in ckpts]
    keys = (
        "anisotropy",
        "intrinsic_dim",
        "linearity",
        "linearity_no_residual",
        "linearity_no_residual_heldout",
        "norm_ratio",
    )
    n_states = len(ckpts[0]["layers"])
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for a, key in zip(axes.flat, keys, strict=True):  # six panels, six keys
        first = 1 if key in BLOCK_KEYS else 0
        for layer in range(first, n_states):
            a.plot(
                steps,
                [c["layers"][layer].get(key, float("nan")) for c in ckpts],
                "o-",
                ms=3,
                color=cmap(layer / max(n_states - 1, 1)),
                label=f"h{layer}",
            )
        a.set(
            title=key.replace("_", " "), xlabel="step", xscale="log" if min(steps) > 0 else "symlog"
        )
        a.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{result['run']}: per-layer geometry over training", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict, out: Path, over_training: bool) -> list[Path]:
    """`--out DIR`: JSON, Markdown table(s) and figure(s); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "profile.json"]
    written[0].write_text(json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n")
    if over_training:
        (out / "over_training.md").write_text(
            "\n\n".join(
                f"## step {c['step']}\n\n{markdown_table(c)}" for c in result["checkpoints"]
            )
        )
        plot_over_training(result, out / "over_training.png")
        plot_profile(result["checkpoints"][-1], out / "profile_last.png")
        written += [out / "over_training.md", out / "over_training.png", out / "profile_last.png"]
    else:
        (out / "profile.md").write_text(markdown_table(result))
        plot_profile(result, out / "profile.png")
        written += [out / "profile.md", out / "profile.png"]
    return written


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt
