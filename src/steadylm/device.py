"""Which torch device a setting such as `train.device` or `--device` means."""

from __future__ import annotations

import torch

from steadylm.errors import SteadyLMError


def resolve_device(name: str, local_rank: int = 0, option: str = "train.device") -> torch.device:
    """The device `name` means: for "auto", this rank's GPU if there is one, else the CPU;
    otherwise a torch device name ("cuda" alone means this rank's GPU). `option` names the
    setting in the error."""
    if name == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SteadyLMError(
            f"{option}: {name!r} requested but CUDA is not available; use 'cpu' or 'auto'"
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device
