"""The trainer's checkpointed state, as components with `state_dict()` / `load_state_dict()`.

Each class adapts one piece of training state to the checkpoint loop of
`steadylm.train.checkpoint`; `Trainer.checkpoint_components` lists them with their files.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    ValueType,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from steadylm.data.reader import SequenceReader
from steadylm.errors import CheckpointError
from steadylm.model.tied_head import drop_tied_head, with_tied_head
from steadylm.train.checkpoint import model_state_for_saving
from steadylm.train.distributed import DistContext


class ModelWeights:
    """The model's weights as consolidated fp32 tensors on rank 0 (None on other ranks), the
    tied head stored once; under FSDP2 both directions are collectives."""

    def __init__(self, model: torch.nn.Module, ctx: DistContext, fsdp: bool):
        self.model, self.ctx, self.fsdp = model, ctx, fsdp

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        if not self.fsdp:
            return model_state_for_saving(self.model) if self.ctx.is_main else None
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(self.model, options=options)
        if not self.ctx.is_main:
            return None
        weights: dict[str, torch.Tensor] = {}
        for k, v in full.items():
            assert isinstance(v, torch.Tensor)  # a model's state dict holds tensors only
            weights[k] = v.float().contiguous()
        return drop_tied_head(weights)

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        sd = with_tied_head(sd)
        if self.fsdp:
            # A copy typed for the stubs' invariant dict[str, ValueType]; the same tensors.
            state: dict[str, ValueType] = dict(sd)
            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))
            return
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )


class OptimizerState:
    """The optimizer's state as torch.distributed.checkpoint reshards it (this rank's part); one
    optimizer, or several over disjoint parameters (fine-tuning steps sparse weights apart)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer],
    ):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state)


class Progress:
    """Where the run is: optimizer steps done, the data cursor, tokens seen, and the world size that
    wrote them (trainer.json). The trainer sets `step` before saving and reads it after loading."""

    def __init__(self, reader: SequenceReader, world_size: int, tokens_per_step: int):
        self.reader, self.world_size, self.tokens_per_step = reader, world_size, tokens_per_step
        self.step = 0
        self.saved_world_size = world_size

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "world_size": self.world_size,
            "reader": self.reader.state_dict(),
            "tokens": self.step * self.tokens_per_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reader.load_state_dict(state["reader"])
        self.step = int(state["step"])
        self.saved_world_size = int(state["world_size"])


class RNGState:
    """This rank's torch random streams (dropout draws): the CPU's, and the current GPU's if any."""

    def __init__(self, device: torch.device):
        self.device = device

    def state_dict(self) -> dict[str, torch.Tensor]:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        return rng

    def load_state_dict(self, rng: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
