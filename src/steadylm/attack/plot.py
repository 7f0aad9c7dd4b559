"""The layer-sensitivity profile as a figure: the (p,q)-singular value of each block's Jacobian."""

from __future__ import annotations

from pathlib import Path


def plot_sensitivity(result: dict, path: Path) -> None:
    """One panel: singular value against block, log scale; the chosen luat layer marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    rows = result["sensitivity"]
    layers = [r["layer"] for r in rows]
    values = [r["singular_value"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(layers, values, "o-", label="(p,q)-singular value")
    if result.get("layer") is not None:
        ax.axvline(result["layer"], color="tab:red", ls="--", alpha=0.6, label="attacked layer")
    ax.set_yscale("log")
    ax.set_xlabel("block (output of)")
    ax.set_ylabel("singular value")
    o = result["options"]
    ax.set_title(f"{Path(result['classifier']).name}: p = {o['p']}, q = {o['q']}", fontsize=10)
    ax.set_xticks(layers)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
