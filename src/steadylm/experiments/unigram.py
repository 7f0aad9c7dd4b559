"""The context-free reference loss a run is compared with to tell whether it learned anything.

The unigram cross-entropy of a run is the loss, in nats, of the best predictor that ignores the
context and was fitted to the training split: each token gets its training-split frequency with
add-one smoothing, p_t = (c_t + 1) / (N + V) (c_t its count among the N training tokens, V the
vocabulary size, so that a token absent from training still has a finite loss), and the loss is
the mean of −ln p_y over exactly the validation tokens the run's evaluation scores (the targets
y of its first min(eval_batches × micro_batch_size, available) windows of block_size tokens),
read through the same cached dataset preparation the trainer uses. A model that has learned only
token frequencies converges to this loss; a run whose final validation loss is within
COLLAPSE_MARGIN of it, or above, has learned nothing more: it is collapsed.

The frequencies come from the training split, not from the validation tokens themselves: the
entropy of a few thousand evaluated tokens' own counts is far lower than any model can reach,
because most of the vocabulary occurs there once or not at all (for `experiments/paper-cpu.toml`,
4,096 evaluated tokens of 931 distinct ids: 5.57 nats from their own counts, 6.42 from the
training split's).
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


def unigram_cross_entropy(train: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    """Mean of −ln p_y over `targets`, p the add-one-smoothed token frequencies of `train`."""
    counts = np.bincount(np.asarray(train, dtype=np.int64).ravel(), minlength=vocab_size).astype(
        float
    )
    p = (counts + 1) / (counts.sum() + len(counts))
    return float(-np.log(p[np.asarray(targets, dtype=np.int64).ravel()]).mean())


def reference(cfg: Config, progress: bool = True) -> Reference:
    """The unigram cross-entropy of the validation tokens `cfg`'s evaluation scores."""
    data = prepare(cfg.data, progress=progress)
    T = cfg.model.block_size
    n_seq = min((len(data.val) - 1) // T, cfg.train.eval_batches * cfg.train.micro_batch_size)
    if n_seq < 1:
        return Reference(
            None, 0, str(data.dir), f"the validation split has fewer than {T + 1} tokens"
        )
    batches = eval_sequences(data.val, T, n_seq, batch_size=n_seq)
    targets = np.concatenate([y.numpy().ravel() for _, y in batches])
    nats = unigram_cross_entropy(data.train, targets, data.tokenizer.vocab_size)
    return Reference(nats, int(targets.size), str(data.dir))


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
