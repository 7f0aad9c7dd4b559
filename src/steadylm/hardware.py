"""What the device does fast: the processor, its matmul-relevant features, and a short timed matmul.

Training speed on a CPU depends on features the machine type does not promise: two hosts of the
same cloud type can be an EPYC without AVX-512, where bf16 matmuls are emulated and tens of times
slower than fp32, or a CPU with AVX512-BF16/AMX, where they are two to five times faster. So the
probe reads the CPU's flags (Linux /proc/cpuinfo) and times one small matmul per dtype, and
`train.precision = "auto"` follows it (`steadylm.train.execution`). On CUDA it reads the compute
capability and whether bf16 is supported natively (compute capability 8.0 and up).

The probe runs once per process and device (under 0.2 s even where bf16 is emulated) and is
recorded in every run's provenance.json.
"""

from __future__ import annotations

import functools
import platform
import time
from dataclasses import asdict, dataclass

import torch

# CPU flags (x86 "flags", ARM "Features") that bear on matmul speed, in the order printed.
SPEED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "asimd",
    "sve",
    "bf16",  # ARM's BFloat16 instructions
)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
PROBE_SHAPE = 256  # square matmul: 34 MFLOP, well under a millisecond in fp32 on one core
PROBE_REPS = 3
# Below this share of fp32's matmul speed bf16 is emulated: emulation measures 0.01-0.05 of
# fp32, native bf16 0.5-5x, so the boundary is far from both.
NATIVE_BF16_MIN_RATIO = 0.5


@dataclass(frozen=True)
class Hardware:
    """One device's speed-relevant facts, as recorded in provenance.json under "hardware"."""

    device: str  # "cpu", "cuda:0"
    name: str  # the CPU model or GPU name
    flags: tuple[str, ...]  # the SPEED_FLAGS present, when the OS lists them
    flags_known: bool  # False where no flag list is readable (macOS, Windows)
    capability: str | None  # CUDA compute capability, e.g. "8.0"
    fp32_gflops: float  # measured PROBE_SHAPE matmul
    bf16_gflops: float
    native_bf16: bool

    @property
    def bf16_slowdown(self) -> float:
        """How many times slower a bf16 matmul is than an fp32 one here (< 1: faster)."""
        return self.fp32_gflops / self.bf16_gflops

    def as_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d

    def summary(self) -> str:
        """One line: the device, what it has, and whether bf16 matmuls are native."""
        if self.capability is not None:
            what = f"compute capability {self.capability}"
        elif self.flags_known:
            what = ", ".join(self.flags) or "none of " + "/".join(SPEED_FLAGS[:3])
        else:
            what = "CPU flags not readable"
        speed = f"matmul fp32 {_gflops(self.fp32_gflops)} GFLOP/s, bf16 {_gflops(self.bf16_gflops)}"
        slower = f"bf16 emulated ({self.bf16_slowdown:.0f}x slower than fp32)"
        verdict = "bf16 native" if self.native_bf16 else slower
        return f"{self.device} {self.name} ({what}); {speed}: {verdict}"


def _gflops(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def processor_name(device: torch.device) -> str:
    """The GPU's or CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in _cpuinfo_lines():
        if line.startswith(("model name", "Model")):  # x86; ARM boards name themselves "Model"
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where it is not readable."""
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return None


def _cpuinfo_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.readlines()
    except OSError:
        return []


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = PROBE_SHAPE) -> float:
    """GFLOP/s of an n x n x n matmul in `dtype`: the best of PROBE_REPS after one warm-up (the
    best, not the median: other processes on a shared machine only ever slow it down). The
    operands come from a private generator: the probe runs once per process, at different points
    of different jobs, and must not move the global random stream a seeded run depends on."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    best = float("inf")
    for i in range(PROBE_REPS + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first call is the warm-up
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / max(best, 1e-9) / 1e9


@functools.cache
def _probe(device: str) -> Hardware:
    dev = torch.device(device)
    fp32 = matmul_gflops(torch.float32, dev)
    bf16 = matmul_gflops(torch.bfloat16, dev)
    fast_enough = bf16 >= NATIVE_BF16_MIN_RATIO * fp32
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        native = torch.cuda.is_bf16_supported(including_emulation=False) and fast_enough
        return Hardware(
            device, processor_name(dev), (), False, f"{major}.{minor}", fp32, bf16, native
        )
    flags = cpu_flags()
    # The flags say whether the instructions exist; the timing whether this torch build uses
    # them. Where no flag list is readable, the timing alone decides.
    has_flag = flags is None or any(f in flags for f in NATIVE_BF16_FLAGS)
    present = tuple(f for f in SPEED_FLAGS if flags and f in flags)
    return Hardware(
        device, processor_name(dev), present, flags is not None, None, fp32, bf16,
        has_flag and fast_enough,
    )  # fmt: skip


def probe(device: torch.device) -> Hardware:
    """The device's speed-relevant facts, measured once per process and device."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _probe(str(device))
