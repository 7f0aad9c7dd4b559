"""Per-layer geometry profiles of one checkpoint, and of every checkpoint of a run.

A profile is a JSON-ready dict: `n_tokens`, `d_model`, `chance_linearity` (d/n) and `layers`, one
entry per hidden state l = 0..L (see `hidden` for the convention) with its anisotropy, mean
cosine and intrinsic dimension; entries l >= 1 add the figures of the block from l−1 to l
(linearity with and without the residual, in-sample and held-out, and the norm ratio).
"""

from __future__ import annotations

from pathlib import Path

import torch

from steadylm.analysis import geometry
from steadylm.analysis.hidden import HiddenStates, collect
from steadylm.analysis.models import AnalysisModel, load_for_analysis
from steadylm.errors import SteadyLMError
from steadylm.rundir import CHECKPOINTS, verified_checkpoints

# Per-layer figures, then per-block (l-1 -> l) figures, in table and plot order.
LAYER_KEYS = ("anisotropy", "mean_cosine", "intrinsic_dim")
BLOCK_KEYS = ("linearity", "linearity_no_residual", "linearity_heldout", "linearity_no_residual_heldout", "norm_ratio")


def layer_profile(hs: HiddenStates, progress: bool = True) -> dict:
    """The profile of collected hidden states (module doc)."""
    from tqdm.auto import tqdm

    n, d = hs.states[0].shape
    layers = []
    for l, X in enumerate(tqdm(hs.states, desc="geometry", unit="layer", disable=not progress, leave=False)):
        row = {
            "layer": l,
            "anisotropy": geometry.anisotropy(X),
            "mean_cosine": geometry.mean_cosine(X),
            "intrinsic_dim": geometry.twonn_dimension(X),
        }
        if l > 0:
            prev = hs.states[l - 1]
            row.update(
                linearity=geometry.linearity(prev, X),
                linearity_no_residual=geometry.linearity(prev, X, residual=False),
                linearity_heldout=geometry.heldout_linearity(prev, X),
                linearity_no_residual_heldout=geometry.heldout_linearity(prev, X, residual=False),
                norm_ratio=geometry.norm_ratio(prev, X),
            )
        layers.append(row)
    return {
        "n_tokens": n,
        "d_model": d,
        "chance_linearity": geometry.chance_linearity(n, d),
        "sequences": hs.sequences,
        "duplicates_dropped": hs.duplicates,
        "layers": layers,
    }


def analyze_model(model: AnalysisModel, texts: list[str], n_tokens: int, drop_first: int,
                  progress: bool = True) -> dict:
    """Collect the hidden states and profile them; with what the model is, for the report."""
    hs = collect(model, texts, n_tokens, drop_first, progress=progress)
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
        **layer_profile(hs, progress),
    }


def run_checkpoints(run: Path) -> list[Path]:
    """The run's checkpoints whose manifest verifies, oldest first (corrupt ones named and skipped)."""
    if not (run / CHECKPOINTS).is_dir():
        raise SteadyLMError(f"{run}: --over-training needs a steadylm run folder (one holding checkpoints/)")
    good = verified_checkpoints(run)
    if not good:
        raise SteadyLMError(f"{run}: no checkpoint with a verified manifest in {run / CHECKPOINTS}")
    return good


def over_training(run: Path, texts: list[str], n_tokens: int, drop_first: int, progress: bool = True,
                  device: torch.device | str = "cpu") -> dict:
    """The profile of every checkpoint of `run`, on the same text sample: {"run", "checkpoints": [...]}."""
    from tqdm.auto import tqdm

    profiles = []
    for ckpt in tqdm(run_checkpoints(run), desc="checkpoints", unit="ckpt", disable=not progress):
        profiles.append(analyze_model(load_for_analysis(ckpt, device), texts, n_tokens, drop_first, progress=False))
    return {"run": str(run), "checkpoints": profiles}
