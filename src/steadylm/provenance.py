"""What produced a run: the provenance.json every job writes into its run folder."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

import steadylm


def git_hash() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]  # the repository holding src/steadylm
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: torch.device, **extra: Any) -> dict[str, Any]:
    """steadylm and torch versions, git hash, device, threads and start time, plus `extra`."""
    return {
        "steadylm_version": steadylm.__version__,
        "git_hash": git_hash(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        **extra,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
