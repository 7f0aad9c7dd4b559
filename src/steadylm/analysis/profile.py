"""Per-layer geometry profiles of one checkpoint, and of every checkpoint of a run.

A profile is a JSON-ready dict: `n_tokens`, `d_model`, `chance_linearity` (d/n), the sampling
(`id_sample`, `id_tokens`, `chunks`, `sequences`) and `layers`, one entry per hidden state
l = 0..L (see `hidden` for the convention and the two samples) with:

- on the position sample: anisotropy and mean cosine; the massive-activation figures (`max_ratio`,
  `massive_dims`, `massive_top`) and `anisotropy_no_massive`, the anisotropy without the massive
  dimensions; the reference-protocol dimension `intrinsic_dim_all` with its `nn_same_token_all`
  (only when the ID sample is not the position sample);
- on the ID sample: `intrinsic_dim` (TwoNN), `intrinsic_dim_mle` and `nn_same_token`;
- for l >= 1, the block from l−1 to l: linearity with and without the residual, in-sample and held
  out, the norm ratio, and the linearity figures again without the massive dimensions of either
  layer (`*_no_massive`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from steadylm.analysis import geometry
from steadylm.analysis.geometry import MASSIVE_RATIO
from steadylm.analysis.hidden import HiddenStates, collect
from steadylm.analysis.models import AnalysisModel, load_for_analysis
from steadylm.errors import SteadyLMError
from steadylm.rundir import CHECKPOINTS, verified_checkpoints

# Per-layer figures, then per-block (l-1 -> l) figures, in table and plot order.
LAYER_KEYS = (
    "anisotropy",
    "anisotropy_no_massive",
    "mean_cosine",
    "max_ratio",
    "intrinsic_dim",
    "intrinsic_dim_mle",
    "nn_same_token",
    "intrinsic_dim_all",
    "nn_same_token_all",
)
BLOCK_KEYS = (
    "linearity",
    "linearity_no_residual",
    "linearity_heldout",
    "linearity_no_residual_heldout",
    "linearity_no_massive",
    "linearity_no_residual_no_massive",
    "linearity_no_residual_heldout_no_massive",
    "norm_ratio",
)


def _block(X: np.ndarray, Y: np.ndarray, suffix: str = "") -> dict:
    return {
        f"linearity{suffix}": geometry.linearity(X, Y),
        f"linearity_no_residual{suffix}": geometry.linearity(X, Y, residual=False),
        f"linearity_no_residual_heldout{suffix}": geometry.heldout_linearity(X, Y, residual=False),
    }


def _massive_top(top: list[dict], hs: HiddenStates, decode=None) -> list[dict]:
    """The largest activations of a layer, each with the token (and its text when `decode`
    is given) and the position of the row it occurred in."""
    return [
        {
            "dim": t["dim"],
            "ratio": t["ratio"],
            "token": int(hs.ids[t["row"]]),
            "text": decode([int(hs.ids[t["row"]])]) if decode else None,
            "position": int(hs.positions[t["row"]]),
        }
        for t in top
    ]


def _block_map(prev: np.ndarray, X: np.ndarray, drop: list[int]) -> dict:
    """How block l maps hidden state l−1 (`prev`) to l (`X`): linearity, held-out linearity,
    norm ratio, and the linearity with the massive dims `drop` removed from both."""
    return {
        **_block(prev, X),
        "linearity_heldout": geometry.heldout_linearity(prev, X),
        "norm_ratio": geometry.norm_ratio(prev, X),
        **_block(geometry.without(prev, drop), geometry.without(X, drop), "_no_massive"),
    }


def layer_profile(
    hs: HiddenStates, massive_ratio: float = MASSIVE_RATIO, decode=None, progress: bool = True
) -> dict:
    """The profile of collected hidden states (module doc); `decode` (ids -> text) names tokens."""
    from tqdm.auto import tqdm

    n, d = hs.states[0].shape
    layers, massive = [], []
    for layer_index, X in enumerate(
        tqdm(hs.states, desc="geometry", unit="layer", disable=not progress, leave=False)
    ):
        m = geometry.massive_activations(X, massive_ratio)
        massive.append(m["dims"])
        ids = geometry.intrinsic_dimensions(hs.id_states[layer_index], hs.id_ids)
        row = {
            "layer": layer_index,
            "anisotropy": geometry.anisotropy(X),
            "anisotropy_no_massive": geometry.anisotropy(geometry.without(X, m["dims"])),
            "mean_cosine": geometry.mean_cosine(X),
            "max_ratio": m["max_ratio"],
            "massive_dims": m["dims"],
            "massive_top": _massive_top(m["top"], hs, decode),
            "intrinsic_dim": ids["twonn"],
            "intrinsic_dim_mle": ids["mle"],
            "nn_same_token": ids["nn_same_token"],
        }
        if hs.id_sample != "all":
            ref = geometry.intrinsic_dimensions(X, hs.ids, k=2)
            row.update(intrinsic_dim_all=ref["twonn"], nn_same_token_all=ref["nn_same_token"])
        if layer_index > 0:
            # one basis, the residual stream's: drop the massive dims of either side
            drop = sorted(set(massive[layer_index - 1]) | set(m["dims"]))
            row.update(_block_map(hs.states[layer_index - 1], X, drop))
        layers.append(row)
    return {
        "n_tokens": n,
        "d_model": d,
        "chance_linearity": geometry.chance_linearity(n, d),
        "id_sample": hs.id_sample,
        "id_tokens": len(hs.id_ids),
        "massive_ratio": massive_ratio,
        "chunks": hs.chunks,
        "sequences": hs.sequences,
        "layers": layers,
    }


def analyze_model(
    model: AnalysisModel,
    texts: list[str],
    n_tokens: int,
    drop_first: int,
    id_sample: str = "token",
    min_chunks: int = 128,
    massive_ratio: float = MASSIVE_RATIO,
    progress: bool = True,
) -> dict:
    """Collect the hidden states and profile them; with what the model is, for the report."""
    hs = collect(model, texts, n_tokens, drop_first, id_sample, min_chunks, progress=progress)
    return {
        "path": model.name,
        "format": model.format,
        "architecture": model.architecture,
        "causal": model.causal,
        "note": model.note,
        "step": model.step,
        "n_layer": len(model.blocks),
        "drop_first": drop_first,
        "hidden_states": "0 = embedding output (input of block 1); l = output of block l; all before the final norm",
        **layer_profile(hs, massive_ratio, model.decode, progress),
    }


def run_checkpoints(run: Path) -> list[Path]:
    """The run's checkpoints whose manifest verifies, oldest first (corrupt ones named and skipped)."""
    if not (run / CHECKPOINTS).is_dir():
        raise SteadyLMError(
            f"{run}: --over-training needs a steadylm run folder (one holding checkpoints/)"
        )
    good = verified_checkpoints(run)
    if not good:
        raise SteadyLMError(f"{run}: no checkpoint with a verified manifest in {run / CHECKPOINTS}")
    return good


def over_training(
    run: Path,
    texts: list[str],
    n_tokens: int,
    drop_first: int,
    id_sample: str = "token",
    min_chunks: int = 128,
    massive_ratio: float = MASSIVE_RATIO,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> dict:
    """The profile of every checkpoint of `run`, on the same text sample: {"run", "checkpoints": [...]}."""
    from tqdm.auto import tqdm

    profiles = []
    for ckpt in tqdm(run_checkpoints(run), desc="checkpoints", unit="ckpt", disable=not progress):
        model = load_for_analysis(ckpt, device)
        profiles.append(
            analyze_model(
                model,
                texts,
                n_tokens,
                drop_first,
                id_sample,
                min_chunks,
                massive_ratio,
                progress=False,
            )
        )
    return {"run": str(run), "checkpoints": profiles}
