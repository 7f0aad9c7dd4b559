"""Render geometry profiles: a per-layer text table, a Markdown table, and matplotlib figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

from steadylm.analysis.profile import BLOCK_KEYS, LAYER_KEYS
from steadylm.jsonsafe import json_safe

# (header, key) of the per-hidden-state table and of the per-block table, in LAYER_KEYS/BLOCK_KEYS order.
_STATE_COLUMNS = tuple(
    zip(
        (
            "aniso",
            "aniso_nm",
            "mean_cos",
            "max/med",
            "ID",
            "ID_mle",
            "nn_same",
            "ID_all",
            "same_all",
        ),
        LAYER_KEYS,
    )
)
_BLOCK_COLUMNS = tuple(
    zip(
        (
            "lin",
            "lin_nores",
            "lin_ho",
            "nores_ho",
            "lin_nm",
            "nores_nm",
            "nores_ho_nm",
            "norm_ratio",
        ),
        BLOCK_KEYS,
    )
)
_LEGEND = (
    "aniso = σ₁²/Σσᵢ² of the centred states; aniso_nm = the same without the massive dimensions; "
    "mean_cos = mean pairwise cosine; max/med = largest |activation| over the median |activation|; "
    "ID / ID_mle = TwoNN / MLE intrinsic dimension of the ID sample; nn_same = share of its points whose "
    "nearest neighbour has the same token id; ID_all / same_all = TwoNN and that share on the position "
    "sample (the reference protocol). lin / lin_nores = linearity of block l−1 → l with / without the "
    "residual (in-sample); lin_ho / nores_ho = fitted on half the tokens, scored on the other half; "
    "*_nm = without the massive dimensions of either layer; norm_ratio = mean ‖h_l − h_{l−1}‖/‖h_{l−1}‖."
)


def _cell(value, key: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.1f}" if key == "max_ratio" else f"{value:.4f}"


def header_lines(profile: dict) -> list[str]:
    step = f", step {profile['step']}" if profile.get("step") is not None else ""
    kind = "decoder (causal)" if profile["causal"] else "encoder (bidirectional)"
    lines = [
        f"{profile['path']}  [{profile['format']}, {profile['architecture']}, {kind}, "
        f"{profile['n_layer']} blocks{step}]",
        (
            f"{profile['n_tokens']} token positions from {profile['sequences']} sequences ({profile['chunks']} "
            f"chunks pooled), d = {profile['d_model']}, --drop-first {profile['drop_first']}; chance linearity "
            f"d/n = {profile['chance_linearity']:.4f}"
        ),
        (
            f"ID sample: {profile['id_tokens']} positions, --id-sample {profile['id_sample']}; massive "
            f"dimensions: largest |activation| > {profile['massive_ratio']:g} x the median"
        ),
        f"hidden states: {profile['hidden_states']}",
    ]
    if profile.get("note"):
        lines.append(f"note: {profile['note']}")
    return lines


def _rows(profile: dict, columns, first: int = 0) -> list[list[str]]:
    return [
        [str(r["layer"])] + [_cell(r.get(k), k) for _, k in columns]
        for r in profile["layers"][first:]
    ]


def _massive_lines(profile: dict) -> list[str]:
    """Per hidden state: how many dimensions are massive, and the three largest with their tokens."""
    lines = []
    for r in profile["layers"]:
        tops = ", ".join(
            f"dim {t['dim']} {t['ratio']:.0f}x on {t['text']!r} (id {t['token']}, position {t['position']})"
            if t.get("text") is not None
            else f"dim {t['dim']} {t['ratio']:.0f}x on id {t['token']} (position {t['position']})"
            for t in r["massive_top"]
        )
        lines.append(f"{r['layer']}: {len(r['massive_dims'])} massive; largest: {tops}")
    return lines


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]


def format_table(profile: dict) -> str:
    """Human output: a header, one row per hidden state, one per block (l−1 -> l), massive dims."""
    states = _aligned([["layer", *(h for h, _ in _STATE_COLUMNS)]] + _rows(profile, _STATE_COLUMNS))
    blocks = _aligned(
        [["block", *(h for h, _ in _BLOCK_COLUMNS)]] + _rows(profile, _BLOCK_COLUMNS, 1)
    )
    massive = [
        "",
        "massive activations (hidden state: dimensions, largest ones):",
        *_massive_lines(profile),
    ]
    return "\n".join(header_lines(profile) + ["", *states, "", *blocks, *massive]) + "\n"


def _markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def markdown_table(profile: dict) -> str:
    notes = "\n".join(f"- {line}" for line in header_lines(profile))
    states = _markdown(["layer", *(h for h, _ in _STATE_COLUMNS)], _rows(profile, _STATE_COLUMNS))
    blocks = _markdown(
        ["block", *(h for h, _ in _BLOCK_COLUMNS)], _rows(profile, _BLOCK_COLUMNS, 1)
    )
    massive = "\n".join(f"- {line}" for line in _massive_lines(profile))
    return (
        f"{notes}\n\n"
        + "\n".join(states)
        + "\n\n"
        + "\n".join(blocks)
        + f"\n\n{_LEGEND}\n\nMassive activations:\n\n{massive}\n"
    )


def _col(rows: list[dict], key: str) -> list[float]:
    """`key` of every row, NaN where a row lacks it."""
    return [r.get(key, float("nan")) for r in rows]


def _curves(a, keys, rows: list[dict], x: list) -> None:
    """One line per (key, style, label) in `keys` that some row has, against `x`."""
    for key, style, label in keys:
        if any(key in r for r in rows):
            a.plot(x, _col(rows, key), style, label=label)


def _panel_anisotropy(a, profile: dict, layers: list) -> None:
    """Anisotropy (with and without massive dims) and mean pairwise cosine per hidden state."""
    rows = profile["layers"]
    _curves(
        a,
        (
            ("anisotropy", "o-", "anisotropy σ₁²/Σσᵢ²"),
            ("anisotropy_no_massive", "o:", "anisotropy, massive dims removed"),
            ("mean_cosine", "s--", "mean pairwise cosine"),
        ),
        rows,
        layers,
    )
    a.set(
        title="Anisotropy",
        xlabel="hidden state",
        ylim=(min(0, *_col(rows, "mean_cosine")) - 0.02, 1.02),
    )


def _panel_intrinsic_dim(a, profile: dict, layers: list) -> None:
    """Intrinsic dimension per hidden state: TwoNN and MLE on the ID sample, TwoNN on all."""
    _curves(
        a,
        (
            ("intrinsic_dim", "o-", f"TwoNN, ID sample ({profile['id_sample']})"),
            ("intrinsic_dim_mle", "s-", "MLE (k = 20), ID sample"),
            ("intrinsic_dim_all", "o:", "TwoNN, position sample"),
        ),
        profile["layers"],
        layers,
    )
    a.set(title="Intrinsic dimension", xlabel="hidden state")


def _panel_nn_same_token(a, profile: dict, layers: list) -> None:
    """Share of points whose nearest neighbour is the same token, per hidden state."""
    _curves(
        a,
        (("nn_same_token", "o-", "ID sample"), ("nn_same_token_all", "o:", "position sample")),
        profile["layers"],
        layers,
    )
    a.set(
        title="Share of points whose nearest neighbour is the same token",
        xlabel="hidden state",
        ylim=(-0.02, 1.02),
    )


def _panel_linearity(a, profile: dict, blocks: list) -> None:
    """Linearity of each block's map (variants with/without residual, held out, massive dims
    removed) against the chance level d/n."""
    rows = profile["layers"][1:]
    _curves(
        a,
        (
            ("linearity", "o-", "linearity"),
            ("linearity_no_residual", "s-", "without residual"),
            ("linearity_heldout", "o:", "held out"),
            ("linearity_no_residual_heldout", "s:", "without residual, held out"),
            ("linearity_no_residual_no_massive", "^-", "without residual, massive dims removed"),
            (
                "linearity_no_residual_heldout_no_massive",
                "^:",
                "without residual, held out, massive dims removed",
            ),
        ),
        rows,
        blocks,
    )
    a.axhline(
        profile["chance_linearity"],
        color="grey",
        lw=1,
        label=f"chance d/n = {profile['chance_linearity']:.3f}",
    )
    a.set(
        title="Linearity of block l−1 → l",
        xlabel="block output (hidden state l)",
        ylim=(max(-1.0, min(0.0, *_col(rows, "linearity_no_residual_heldout"))) - 0.05, 1.05),
    )


def _panel_norm_ratio(a, profile: dict, blocks: list) -> None:
    """How much each block changes the hidden state, relative to its input (log scale)."""
    a.plot(blocks, _col(profile["layers"][1:], "norm_ratio"), "o-")
    a.set(
        title="Norm ratio ‖h_l − h_{l−1}‖/‖h_{l−1}‖",
        xlabel="block output (hidden state l)",
        yscale="log",
    )


def _panel_massive(a, profile: dict, layers: list) -> None:
    """Largest over median |activation| per hidden state, against the massive threshold."""
    a.plot(
        layers, _col(profile["layers"], "max_ratio"), "o-", label="largest / median |activation|"
    )
    a.axhline(
        profile["massive_ratio"],
        color="grey",
        lw=1,
        label=f"massive threshold {profile['massive_ratio']:g}",
    )
    a.set(title="Massive activations", xlabel="hidden state", yscale="log")


def plot_profile(profile: dict, path: Path) -> None:
    """Six panels against depth: anisotropy; ID; nearest-neighbour token share; linearity; norm
    ratio; largest over median |activation|."""
    plt = _pyplot()
    layers = [r["layer"] for r in profile["layers"]]
    blocks = layers[1:]
    fig, ax = plt.subplots(2, 3, figsize=(16, 8))
    _panel_anisotropy(ax[0, 0], profile, layers)
    _panel_intrinsic_dim(ax[0, 1], profile, layers)
    _panel_nn_same_token(ax[0, 2], profile, layers)
    _panel_linearity(ax[1, 0], profile, blocks)
    _panel_norm_ratio(ax[1, 1], profile, blocks)
    _panel_massive(ax[1, 2], profile, layers)
    for a in (ax[0, 0], ax[0, 1], ax[0, 2], ax[1, 0], ax[1, 2]):
        a.legend(fontsize=7)
    for a in ax.flat:
        a.grid(alpha=0.3)
    fig.suptitle(
        f"{Path(profile['path']).name}: {profile['n_tokens']} positions, ID sample {profile['id_tokens']}, "
        f"d = {profile['d_model']}",
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
        "anisotropy_no_massive",
        "intrinsic_dim",
        "intrinsic_dim_mle",
        "linearity",
        "linearity_no_residual",
        "linearity_no_residual_heldout",
        "norm_ratio",
    )
    n_states = len(ckpts[0]["layers"])
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(2, 4, figsize=(19, 8))
    for a, key in zip(axes.flat, keys):
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
    fig.suptitle(
        f"{result['run']}: per-layer geometry over training (ID sample: {ckpts[0]['id_sample']})",
        fontsize=11,
    )
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
