"""How a run's step executes on the hardware it finds: precision and torch.compile, resolved once.

`train.precision = "auto"` is bf16 autocast where the hardware probe (`steadylm.hardware`) finds
bf16 matmuls native (CUDA with compute capability 8.0 and up, CPUs with AVX512-BF16 or AMX), fp32
elsewhere. The resolved precision is recorded in provenance.json and a resumed run keeps it, so a
run started on one host and resumed on another trains in one precision throughout. Asking for
bf16 where it is emulated warns once with the measured slowdown (`train.precision_strict = true`
makes it an error).

`train.compile = "auto"` compiles when compiling pays with room to spare: never for fp32 on a CPU,
where the step is matmul-bound and `steadylm bench --compare nanogpt` measured steadylm's
compiled step no faster than its eager one; otherwise when the run's estimated eager time is at
least COMPILE_PAYS_AT times the compile time. With the speed-up
compile brings to this model (1.1-1.3x measured by `steadylm bench`), compiling saves 10-25% of
the eager time, so at ten times the compile time the saving is at least its cost. The eager
time is estimated as max_steps x tokens per step x `GPT.flops_per_token` over the probe's
matmul throughput at MATMUL_EFFICIENCY; the compile time is the assumed COMPILE_SECONDS (what
`steadylm bench` measures on a cold cache, rounded up). Short runs and tests stay eager.
"""

from __future__ import annotations

import os
import shutil
import sys

import torch

from steadylm.config import Config
from steadylm.errors import SteadyLMError
from steadylm.hardware import Hardware

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_SECONDS = 60.0
COMPILE_PAYS_AT = 10.0
# A training step reaches about half the probe's matmul throughput (bench: 0.57-0.67 of the
# large-matmul peak, and the probe's small matmul runs below that peak).
MATMUL_EFFICIENCY = 0.5

_warned: set[str] = set()  # warnings already given in this process


def resolve_precision(cfg: Config, hw: Hardware, resumed: dict | None = None) -> str:
    """The precision `train.precision` means on `hw`. `resumed` is the provenance.json of the
    run being resumed: "auto" keeps the precision it started with."""
    asked = cfg.train.precision
    device_type = hw.device.split(":")[0]
    recorded = (resumed or {}).get("precision")
    if asked == "auto":
        asked = recorded if recorded in AUTOCAST else ("bf16" if hw.native_bf16 else "fp32")
    if asked == "fp16" and device_type != "cuda":
        raise SteadyLMError(
            "train.precision: 'fp16' needs CUDA (it relies on a grad scaler); use 'bf16' or 'fp32' on CPU"
        )
    if asked == "bf16" and not hw.native_bf16:
        what = (
            f"{hw.name} (compute capability {hw.capability})"
            if hw.capability
            else f"this CPU ({hw.name}, no avx512_bf16 or amx_bf16)"
        )
        message = (
            f"train.precision: bf16 matmuls are emulated on {what}: measured "
            f"{hw.bf16_slowdown:.0f}x slower than fp32"
        )
        if cfg.train.precision_strict:
            raise SteadyLMError(f"{message}; use train.precision='fp32' or 'auto'")
        _warn_once(
            f"warning: {message}; continuing in bf16 (fp32 or auto is faster here; "
            "train.precision_strict=true makes this an error)"
        )
    return asked


def resolve_compile(
    cfg: Config,
    hw: Hardware,
    precision: str,
    flops_per_token: float,
    world_size: int = 1,
    resumed: dict | None = None,
) -> tuple[bool, str]:
    """Whether to torch.compile the model, and the reason in a few words. `resumed` is the
    provenance.json of the run being resumed: "auto" keeps the choice it recorded (compiled
    and eager steps agree only to rounding, so switching mid-run would break exact resume),
    and a run that recorded none started before "auto" existed and ran eager."""
    asked = cfg.train.compile
    if isinstance(asked, bool):
        return asked, "train.compile=" + str(asked).lower()
    if resumed is not None:
        kept = bool(resumed.get("compile", False))
        return kept, f"auto: kept from the run's start ({'on' if kept else 'off'})"
    if hw.device.startswith("cpu") and precision == "fp32":
        return False, "auto: off for fp32 on CPU (matmul-bound: compiling measured no faster)"
    if hw.device.startswith("cpu") and not _have_cxx():
        return False, "auto: no C++ compiler for torch.compile on CPU"
    gflops = hw.bf16_gflops if precision in ("bf16", "fp16") else hw.fp32_gflops
    tokens = cfg.train.batch_size * cfg.model.block_size / world_size  # per rank and step
    step_s = tokens * flops_per_token / (gflops * 1e9 * MATMUL_EFFICIENCY)
    run_s = cfg.train.max_steps * step_s
    on = run_s >= COMPILE_PAYS_AT * COMPILE_SECONDS
    sign = ">=" if on else "<"
    return on, (
        f"auto: estimated eager run {_duration(run_s)} {sign} {COMPILE_PAYS_AT:.0f} x "
        f"{COMPILE_SECONDS:.0f} s compile"
    )


def _have_cxx() -> bool:
    """Whether torch.compile's CPU backend will find a C++ compiler."""
    names = (os.environ.get("CXX", ""), "g++", "clang++", "c++")
    return any(name and shutil.which(name) for name in names)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"steadylm: {message}", file=sys.stderr)
