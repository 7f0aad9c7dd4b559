"""Read the residual stream between blocks with forward hooks, without touching the model's numerics.

`BlockTaps(blocks)` is a context manager: inside it, every forward pass through `blocks` stores
block 1's input (the embedding output, hidden state 0) and each block l's output (hidden state l),
so L blocks give L+1 states of shape (B, T, C). Hooks work the same on our GPT, Hugging Face
models, DDP/FSDP-wrapped blocks and compiled models, which a new return path through `forward`
would not.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class BlockTaps:
    def __init__(self, blocks: nn.ModuleList, detach: bool = True):
        self.blocks = blocks
        self.detach = detach  # False keeps the autograd graph (regularisers); True for analysis
        self.states: list[torch.Tensor | None] = [None] * (len(blocks) + 1)
        self._handles: list = []

    def __enter__(self) -> BlockTaps:
        self.states = [None] * (len(self.blocks) + 1)
        self._handles = [self.blocks[0].register_forward_pre_hook(self._input, with_kwargs=True)]
        self._handles += [
            b.register_forward_hook(self._output(i + 1)) for i, b in enumerate(self.blocks)
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach() if self.detach else t

    def _input(self, module, args, kwargs):
        self.states[0] = self._keep(args[0] if args else kwargs["hidden_states"])  # (B, T, C)

    def _output(self, index: int):
        def hook(module, args, output):
            # Hugging Face blocks may return a tuple (hidden, attention weights, ...).
            hidden = output[0] if isinstance(output, tuple) else output  # (B, T, C)
            self.states[index] = self._keep(hidden)

        return hook
