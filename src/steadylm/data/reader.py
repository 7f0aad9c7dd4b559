"""Training and evaluation sequences cut from a token stream.

The stream is cut into non-overlapping windows: sequence i is tokens[i*T : i*T + T] as input and the
same window shifted by one token as targets, T = block_size. Windows never change with the batch size
or world size, so the data a run sees depends only on the seed, never on how it is parallelised.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from steadylm.errors import DataError


def _n_windows(tokens: np.ndarray, block_size: int, what: str) -> int:
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    n = (len(tokens) - 1) // block_size
    if n < 1:
        raise DataError(
            f"the {what} data has {len(tokens)} tokens; need at least block_size+1 = {block_size + 1} "
            "(give more text or a smaller model.block_size)"
        )
    return n


def _windows(
    tokens: np.ndarray, starts: np.ndarray, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([tokens[s : s + block_size + 1] for s in starts]).astype(np.int64)
    batch = torch.from_numpy(rows)
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


class SequenceReader:
    """Draws training sequences without replacement from a seeded permutation per epoch.

    Epoch e visits every sequence once, in the order `np.random.default_rng([seed, e]).permutation`.
    The cursor (epoch, position) is all the state there is, so `state_dict` / `load_state_dict` resume
    the exact stream. After the last sequence of an epoch is taken the cursor moves to position 0 of the
    next epoch at once, so `epoch` counts the epochs started so far, from 0.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int):
        self.tokens = tokens
        self.block_size = block_size
        self.seed = seed
        self.n_sequences = _n_windows(tokens, block_size, "training")
        self.epoch = 0
        self.position = 0
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, its permutation)

    def _permutation(self) -> np.ndarray:
        if self._perm is None or self._perm[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._perm = (self.epoch, rng.permutation(self.n_sequences))
        return self._perm[1]

    def _take(self, count: int) -> np.ndarray:
        """The next `count` sequence indices of the stream, crossing epochs as needed; moves the cursor."""
        parts = []
        while count:
            take = min(count, self.n_sequences - self.position)
            parts.append(self._permutation()[self.position : self.position + take])
            self.position += take
            count -= take
            if self.position == self.n_sequences:
                self.epoch, self.position = self.epoch + 1, 0
        return np.concatenate(parts)

    def next_batch(
        self, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch of `batch_size` sequences.

        Rank r gets the r-th contiguous slice of batch_size // world_size sequences as int64 tensors
        x, y of shape (batch_size // world_size, block_size), y being x shifted by one token. Every rank
        advances the cursor by the whole `batch_size`, so the ranks' slices are disjoint and together
        are exactly the batch a single process would draw.
        """
        if batch_size < 1 or world_size < 1 or batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be a positive multiple of world_size {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        share = batch_size // world_size
        mine = self._take(batch_size)[rank * share : (rank + 1) * share]
        return _windows(self.tokens, mine * self.block_size, self.block_size)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "block_size": self.block_size,
            "n_sequences": self.n_sequences,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream of a checkpoint, its seed included, on the same data and block size."""
        for key in ("block_size", "n_sequences"):
            if int(state[key]) != getattr(self, key):
                raise DataError(
                    f"the data or block size changed since the checkpoint: {key} is {getattr(self, key)}, "
                    f"the checkpoint has {state[key]}; prepare the same data and block size to resume"
                )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perm = None


def eval_sequences(
    tokens: np.ndarray,
    block_size: int,
    max_sequences: int,
    batch_size: int = 1,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed validation set: micro-batches (x, y) of the first `max_sequences` windows, in order.

    Yields int64 tensors of shape (<= batch_size, block_size); the last micro-batch may be smaller.
    With several ranks, rank r takes windows r, r + world_size, ...; the ranks' counts then differ by at
    most one, so sum losses and token counts per rank and all-reduce once at the end.
    """
    if max_sequences < 1 or batch_size < 1:
        raise ValueError(
            f"max_sequences ({max_sequences}) and batch_size ({batch_size}) must be >= 1"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    n = min(max_sequences, _n_windows(tokens, block_size, "validation"))
    mine = np.arange(rank, n, world_size)
    for i in range(0, len(mine), batch_size):
        yield _windows(tokens, mine[i : i + batch_size] * block_size, block_size)
