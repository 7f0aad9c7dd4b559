"""What produced a run: the provenance.json every job writes into its run folder."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

import steadylm
from steadylm.hardware import probe


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
    """steadylm and torch versions, git hash, device, what it does fast (`steadylm.hardware`),
    threads and start time, plus `extra`."""
    hw = probe(device)
    return {
        "steadylm_version": steadylm.__version__,
        "git_hash": git_hash(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": hw.name,
        "hardware": hw.as_dict(),
        "threads": torch.get_num_threads(),
        **extra,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
