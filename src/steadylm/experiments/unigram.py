"""The context-free reference loss a run is compared with to tell whether it learned anything.

The unigram cross-entropy of a run is the entropy, in nats, of the token frequencies of exactly
the validation tokens its evaluation scores: the targets of the first
min(eval_batches × micro_batch_size, available) windows of block_size tokens of the validation
split, read through the same cached dataset preparation the trainer uses. The frequencies are
counted on those validation tokens themselves, so the figure is the lowest loss any predictor
that ignores the context could reach on them; a model that learned only the training split's
token frequencies scores at or above it. A run whose final validation loss is within
COLLAPSE_MARGIN of it, or above, has learned nothing a unigram table would not: it is collapsed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from steadylm.config import Config
from steadylm.data.prepare import prepare
from steadylm.data.reader import eval_sequences
from steadylm.errors import SteadyLMError

COLLAPSE_MARGIN = 0.05  # nats


@dataclass(frozen=True)
class Reference:
    """The unigram cross-entropy of one data setting, or why it could not be computed."""

    nats: float | None
    tokens: int = 0  # validation tokens scored
    dataset: str = ""  # the prepared dataset's folder
    error: str | None = None


def _key(cfg: Config) -> str:
    """What the reference depends on: the data, the window length and how much is evaluated."""
    return json.dumps(
        {
            "data": asdict(cfg.data),
            "block_size": cfg.model.block_size,
            "sequences": cfg.train.eval_batches * cfg.train.micro_batch_size,
        },
        sort_keys=True,
    )


def unigram_entropy(tokens: np.ndarray) -> float:
    """−Σ p_t ln p_t over the tokens' own frequencies p_t."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64).ravel())
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def reference(cfg: Config, progress: bool = True) -> Reference:
    """The unigram cross-entropy of the validation tokens `cfg`'s evaluation scores."""
    data = prepare(cfg.data, progress=progress)
    T = cfg.model.block_size
    n_seq = min((len(data.val) - 1) // T, cfg.train.eval_batches * cfg.train.micro_batch_size)
    if n_seq < 1:
        return Reference(
            None, 0, str(data.dir), f"the validation split has fewer than {T + 1} tokens"
        )
    targets = np.concatenate(
        [y.numpy().ravel() for _, y in eval_sequences(data.val, T, n_seq, batch_size=n_seq)]
    )
    return Reference(unigram_entropy(targets), int(targets.size), str(data.dir))


class References:
    """References per data setting, each computed once however many runs share it."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self._cache: dict[str, Reference] = {}

    def __call__(self, cfg: Config | None) -> Reference:
        if cfg is None:
            return Reference(None, error="the run has no readable config.toml")
        key = _key(cfg)
        if key not in self._cache:
            try:
                self._cache[key] = reference(cfg, self.progress)
            except SteadyLMError as e:
                self._cache[key] = Reference(None, error=str(e))
        return self._cache[key]


def collapsed(final_val_loss: float | None, ref: Reference) -> bool | None:
    """True when the final validation loss is within COLLAPSE_MARGIN of the unigram
    cross-entropy or above it (a non-finite loss counts as above); None when either is unknown."""
    if ref.nats is None or final_val_loss is None:
        return None
    return not math.isfinite(final_val_loss) or final_val_loss >= ref.nats - COLLAPSE_MARGIN
