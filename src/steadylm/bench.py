"""`steadylm bench`: training speed and monitoring cost, measured side by side in one run.

Every figure is a median over repetitions after warm-up, on the current machine with its current
thread count, and targets are ratios between figures measured here, so a noisy shared machine
moves numerator and denominator together. Training measurements run in a fresh process each
(spawned), so peak memory is that configuration's alone.

FLOPs per token: `GPT.flops_per_token` (6·N plus attention, forward and backward).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steadylm.hardware import Hardware, probe, processor_name

# The reference configuration of the performance work: GPT-2 vocabulary, 6 layers of width 256,
# 4 heads, 256-token blocks, batch 8, every default monitor on.
REFERENCE_SHAPE = {"vocab_size": 50257, "block_size": 256, "n_layer": 6, "n_head": 4, "n_embd": 256}
REFERENCE_BATCH = 8
REFERENCE = [
    *(f"model.{k}={v}" for k, v in REFERENCE_SHAPE.items()),
    'data.tokenizer="gpt2"',
    f"train.batch_size={REFERENCE_BATCH}",
    f"train.micro_batch_size={REFERENCE_BATCH}",
    "train.max_steps=100000",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "train.compile=false",  # each row names its precision and compile setting
]
MONITORS_OFF = [
    "monitor.tev_every=0",
    "monitor.stats_every=0",
    "monitor.gradvar_every=0",
    "monitor.act_every=0",
]
PEAK_SHAPE = 2048  # square matmul for the peak: large enough to be compute-bound on CPUs and GPUs

TARGETS = {
    "fp32_fraction_of_peak": (">=", 0.65),
    "bf16_speedup_over_fp32": (">=", 2.0),
    "monitor_share": ("<", 0.01),
    "data_share": ("<", 0.01),
    "mlra_over_mha_step_time": ("<=", 1.10),
}


def median_time(
    fn: Callable[[], Any], reps: int, warmup: int, sync: Callable[[], None] = lambda: None
) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync_for(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def matmul_peak(
    dtype: torch.dtype, device: torch.device, n: int = PEAK_SHAPE, reps: int = 7
) -> float:
    """FLOP/s of an n x n x n matmul in `dtype` (the practical peak the training figures are held to)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / median_time(lambda: a @ b, reps, warmup=2, sync=_sync_for(device))


@dataclass
class TrainMeasure:
    label: str
    step_s: float
    tokens_per_s: float
    flops_per_s: float
    sections: dict[str, float] = field(default_factory=dict)  # median seconds per section
    peak_rss_mb: float = 0.0
    n_params: int = 0
    gradvar_s: float | None = None  # the gradient-variance hooks' own time on a reference step
    periodic: dict[str, float] = field(
        default_factory=dict
    )  # extra seconds of periodic monitor steps
    compile_s: float | None = None  # first (compiling) steps, when compiled


def periodic_plan(cadence: dict[str, int], after: int) -> list[tuple[str, int, list[str]]]:
    """For each periodic monitor, in order of cadence: the step after `after` to time it on (the
    one of its firing steps that fires the fewest others) and the monitors measured before it
    that fire there too, whose extra time is subtracted. With the default cadences (50, 100,
    200) each is a multiple of the last, so the activations step always fires the stats too."""
    span = math.lcm(*cadence.values())
    plan: list[tuple[str, int, list[str]]] = []
    for name in sorted(cadence, key=lambda k: cadence[k]):
        every = cadence[name]
        first = every * (after // every + 1)
        at = min(
            range(first, first + span, every),
            key=lambda a: sum(a % e == 0 for e in cadence.values()),
        )
        measured = [m for m, _, _ in plan]
        plan.append((name, at, [o for o in measured if at % cadence[o] == 0]))
    return plan


def _measure_training(
    label: str, overrides: list[str], steps: int, warmup: int, periodic: bool = True
) -> TrainMeasure:
    """Runs in a spawned process: build the trainer, time `steps` steps after `warmup`, then
    (with `periodic`) the periodic monitors' steps."""
    from steadylm.config import load_config
    from steadylm.train.trainer import Trainer

    cfg = load_config(None, [*REFERENCE, *overrides])
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / "run", progress=False)
    sync = _sync_for(trainer.ctx.device)
    # Skip the steps on which the periodic monitors fire, so the median is a typical step;
    # their cost is measured separately below.
    step = 1
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step(step)
        step += 1
    sync()
    warm_s = time.perf_counter() - t0
    trainer.timer.enabled = True
    trainer.timer.take()
    times, sections = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        row = trainer.train_step(step).row
        float(row["loss"])
        sync()
        times.append(time.perf_counter() - t0)
        sections.append(trainer.timer.take())
        step += 1
    step_s = statistics.median(times)
    extra, gradvar_s = (
        _periodic_costs(trainer, sync, step_s, after=step) if periodic else ({}, None)
    )
    tokens = cfg.train.batch_size * cfg.model.block_size
    return TrainMeasure(
        label=label,
        step_s=step_s,
        tokens_per_s=tokens / step_s,
        flops_per_s=trainer.model.flops_per_token() * tokens / step_s,
        sections={k: statistics.median(s.get(k, 0.0) for s in sections) for k in sections[0]},
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        n_params=trainer.model.num_parameters(),
        gradvar_s=gradvar_s,
        periodic=extra,
        compile_s=warm_s if trainer.compile else None,
    )


def _periodic_costs(
    trainer, sync: Callable[[], None], step_s: float, after: int
) -> tuple[dict[str, Any], float | None]:
    """The periodic monitors: each one's extra time over a typical step (`step_s`), amortised by
    its cadence, and the gradient-variance hooks' own seconds."""
    mon = trainer.cfg.monitor
    if not (mon.stats_every and mon.act_every and mon.gradvar_every):
        return {}, None
    cadence = {"stats": mon.stats_every, "act": mon.act_every, "gradvar": mon.gradvar_every}
    span = math.lcm(*cadence.values())

    def timed_step(at: int, reps: int = 3) -> tuple[float, dict]:
        """Median over `reps` steps that all fire the same monitors (at, at + lcm, ...)."""
        times = []
        for k in range(reps):
            t0 = time.perf_counter()
            row = trainer.train_step(at + k * span).row
            float(row["loss"])
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), row

    extra: dict[str, float] = {}
    gradvar_s = None
    for name, at, also in periodic_plan(cadence, after=after):
        t, row = timed_step(at)
        extra[name] = max(0.0, t - step_s - sum(extra[o] for o in also))
        if name == "gradvar":
            gradvar_s = float(row["grad_var_seconds"])
    periodic: dict[str, Any] = {f"{k}_extra_s": v for k, v in extra.items()}
    periodic["amortised_s"] = sum(extra[k] / cadence[k] for k in cadence)
    periodic.update({f"{k}_every": v for k, v in cadence.items()})
    return periodic, gradvar_s


def measure_training(
    label: str, overrides: list[str], steps: int, warmup: int, periodic: bool = True
) -> TrainMeasure:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure_training, (label, overrides, steps, warmup, periodic))


def tev_cost(rows: int = 50257, d: int = 768, reps: int = 9) -> dict[str, float]:
    """Seconds for TEV of a GPT-2-small-sized embedding: the every-step path and the exact one."""
    from steadylm.monitor.tev import tev_per_row, tev_per_row_fast

    w = torch.randn(rows, d) * 0.02

    def every_step():
        t = tev_per_row_fast(w)
        return t.mean(), t.std(correction=0)

    return {
        "tev_step_s": median_time(every_step, reps, warmup=2),
        "tev_exact_s": median_time(lambda: tev_per_row(w), reps, warmup=2),
    }


def tt_cost(
    rows: int = 50257, d: int = 256, tokens: int = 8 * 256, rank: int = 16, reps: int = 7
) -> dict[str, Any]:
    """Seconds per training step of a TT embedding at the reference config (GPT-2 vocabulary,
    width 256, 2048 tokens per step, rank 16, auto shape), forward and backward: the gather of
    the step's tokens, the reconstruction the tied head reads (`tt_head = "tied_dense"`) and TEV
    over the reconstructed rows; beside a dense table's lookup."""
    from steadylm.model.tt_embedding import TTEmbedding, auto_shape
    from steadylm.monitor.tev import TEVMonitor

    shape = auto_shape(rows, d, 3)
    tt = TTEmbedding(rows, shape, rank, init_std=0.02)
    dense = torch.nn.Embedding(rows, d)
    ids = torch.randint(0, rows, (tokens,))
    grad_rows = torch.randn(tokens, d)
    grad_full = torch.randn(rows, d)
    monitor = TEVMonitor(tt, rows)

    def step(
        make: Callable[[], torch.Tensor], grad: torch.Tensor, module: torch.nn.Module
    ) -> Callable[[], None]:
        def run() -> None:
            module.zero_grad(set_to_none=True)
            make().backward(grad)

        return run

    return {
        "tt_shape": str(shape),
        "tt_rank": rank,
        "tt_tokens": tokens,
        "tt_params": tt.num_parameters(),
        "tt_gather_s": median_time(step(lambda: tt(ids), grad_rows, tt), reps, warmup=2),
        "tt_full_s": median_time(step(tt.full, grad_full, tt), reps, warmup=2),
        "tt_tev_s": median_time(monitor.compute, reps, warmup=2),
        "dense_lookup_s": median_time(step(lambda: dense(ids), grad_rows, dense), reps, warmup=2),
    }


def tokenizer_throughput(n_chars: int = 2_000_000) -> dict[str, float]:
    """GPT-2 tokenizer tokens/s on the default corpus's text (encode_batch, all threads)."""
    from steadylm.data.corpus import default_corpus
    from steadylm.data.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    texts, total = [], 0
    for doc in default_corpus(progress=False):
        texts.append(doc.text)
        total += len(doc.text)
        if total >= n_chars:
            break
    t0 = time.perf_counter()
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    seconds = time.perf_counter() - t0
    return {"tokenizer_tokens_per_s": n_tokens / seconds, "tokenizer_chars": total}


def run(
    steps: int = 6, warmup: int = 3, compile: bool = True, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every measurement and ratio; the CLI prints it as a table or JSON. Where bf16 matmuls are
    emulated (`steadylm.hardware`), the bf16 rows are skipped: a bf16 step would take minutes."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hw = probe(device)
    out: dict[str, Any] = {
        "device": str(device),
        "processor": processor_name(device),
        "hardware": hw.as_dict(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    progress("matmul peak (fp32, bf16)")
    out["peak_fp32_flops"] = matmul_peak(torch.float32, device)
    out["peak_bf16_flops"] = matmul_peak(torch.bfloat16, device) if hw.native_bf16 else None
    measures = _measure_training_steps(steps, warmup, compile, hw.native_bf16, progress)
    out["training"] = {k: vars(v) for k, v in measures.items()}
    progress("output layer and loss (fused: forward and gradient in one pass)")
    out["head"] = head_cost(device, bf16=hw.native_bf16)
    progress("TEV on 50257 x 768")
    out.update(tev_cost())
    progress("TT embedding at the reference config")
    out["tt"] = tt_cost()
    progress("tokenizer throughput")
    out.update(tokenizer_throughput())
    best_bf16, ratios = _ratios(out, measures)
    out["best_bf16"] = best_bf16.label if best_bf16 else None
    out["ratios"] = ratios
    out["targets"] = {
        name: {
            "value": ratios[name],
            "op": op,
            "target": bound,
            "met": _met(ratios[name], op, bound),
        }
        for name, (op, bound) in TARGETS.items()
    }
    return out


def _measure_training_steps(
    steps: int, warmup: int, compile: bool, bf16: bool, progress: Callable[[str], None]
) -> dict[str, TrainMeasure]:
    """Time the training step in each configuration (fp32 with and without monitors, MLRA, fp32
    compiled when `compile`; with `bf16`, bf16 eager and compiled), keyed by label."""
    runs = [
        ("fp32", ['train.precision="fp32"']),
        ("fp32, monitors off", ['train.precision="fp32"', *MONITORS_OFF]),
        ("mlra fp32", ['train.precision="fp32"', 'model.attention="mlra"']),
    ]
    if compile:
        runs.append(("fp32 + compile", ['train.precision="fp32"', "train.compile=true"]))
    if bf16:
        runs.append(("bf16", ['train.precision="bf16"']))
        if compile:
            runs.append(("bf16 + compile", ['train.precision="bf16"', "train.compile=true"]))
    measures = {}
    for label, overrides in runs:
        progress(f"training step: {label}")
        measures[label] = measure_training(
            label, overrides, steps, warmup + (2 if "compile" in label else 0)
        )
    return measures


def head_cost(device: torch.device, bf16: bool, reps: int = 3) -> dict[str, float]:
    """Seconds of the fused output layer and loss at the reference config (2048 tokens, width
    256, GPT-2 vocabulary). `lm_head_loss` makes the head's gradients during the forward pass
    (softmax minus one-hot, while the logits are hot), so the training step's "forward" section
    holds all three of the head's matmuls, forward and backward, and its "backward" section only
    the blocks' backward: this is the share of "forward" that is the head."""
    from steadylm.model.lm_head_loss import lm_head_loss

    tokens, d = REFERENCE_BATCH * REFERENCE_SHAPE["block_size"], REFERENCE_SHAPE["n_embd"]
    h = (torch.randn(tokens, d, device=device) * 0.5).requires_grad_()
    w = (torch.randn(REFERENCE_SHAPE["vocab_size"], d, device=device) * 0.02).requires_grad_()
    y = torch.randint(0, REFERENCE_SHAPE["vocab_size"], (tokens,), device=device)
    sync = _sync_for(device)
    out = {"head_fp32_s": median_time(lambda: lm_head_loss(h, w, y), reps, warmup=1, sync=sync)}
    if bf16:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out["head_bf16_s"] = median_time(
                lambda: lm_head_loss(h, w, y), reps, warmup=1, sync=sync
            )
    return out


def _ratios(
    out: dict[str, Any], measures: dict[str, TrainMeasure]
) -> tuple[TrainMeasure | None, dict[str, float | None]]:
    """The fastest bf16 configuration (None without bf16 rows), and the ratios judged against
    TARGETS: shares of the matmul peak, bf16 speed-ups, the monitors' and data's share of a
    step, MLRA against MHA, and TEV's, the gradient variance's and the TT embedding's costs."""
    fp32, off = measures["fp32"], measures["fp32, monitors off"]
    bf16 = measures.get("bf16")
    tt = out["tt"]
    bf16_rows = [m for k, m in measures.items() if k.startswith("bf16")]
    best_bf16 = max(bf16_rows, key=lambda m: m.tokens_per_s) if bf16_rows else None
    compiled = measures.get("fp32 + compile")
    ratios: dict[str, float | None] = {
        "fp32_fraction_of_peak": fp32.flops_per_s / out["peak_fp32_flops"],
        "bf16_fraction_of_peak": bf16.flops_per_s / out["peak_bf16_flops"]
        if bf16 and out["peak_bf16_flops"]
        else None,
        "bf16_speedup_over_fp32": best_bf16.tokens_per_s / fp32.tokens_per_s if best_bf16 else None,
        "bf16_speedup_over_fp32_eager": bf16.tokens_per_s / fp32.tokens_per_s if bf16 else None,
        "fp32_compile_speedup": compiled.tokens_per_s / fp32.tokens_per_s if compiled else None,
        "monitor_share": (
            fp32.sections.get("monitors", 0.0) + fp32.periodic.get("amortised_s", 0.0)
        )
        / fp32.step_s,
        "monitor_share_every_step": fp32.sections.get("monitors", 0.0) / fp32.step_s,
        "monitor_share_ab": (fp32.step_s - off.step_s) / fp32.step_s,
        "data_share": fp32.sections.get("data", 0.0) / fp32.step_s,
        "mlra_over_mha_step_time": measures["mlra fp32"].step_s / fp32.step_s,
        "mlra_over_mha_peak_rss": measures["mlra fp32"].peak_rss_mb / fp32.peak_rss_mb,
        "tev_768_share_of_fp32_step": out["tev_step_s"] / fp32.step_s,
        "gradvar_over_tev": (fp32.gradvar_s or 0.0) / out["tev_step_s"],
        # A tied TT model's extra work per step over a dense one (gather + reconstruction + TEV
        # on the rebuilt rows, less the dense lookup), as a share of the dense fp32 step.
        "tt_tied_extra_share_of_fp32_step": (
            tt["tt_gather_s"] + tt["tt_full_s"] + tt["tt_tev_s"] - tt["dense_lookup_s"]
        )
        / fp32.step_s,
    }
    return best_bf16, ratios


@dataclass(frozen=True)
class CompareMode:
    """One row of `--compare nanogpt`: steadylm's precision, the plain loop's, and whether both
    are compiled."""

    bf16: bool  # steadylm under train.precision="bf16" (else "fp32")
    plain_bf16: bool  # the plain loop's forward under bf16 autocast (else fp32)
    compiled: bool

    @property
    def label(self) -> str:
        ours, plain = ("bf16" if b else "fp32" for b in (self.bf16, self.plain_bf16))
        name = ours if ours == plain else f"{ours} vs plain {plain}"
        return name + (" + compile" if self.compiled else "")


def compare_modes(native_bf16: bool, compile: bool) -> list[CompareMode]:
    """fp32 against fp32 everywhere. Where bf16 matmuls are native (what `train.precision="auto"`
    then picks), steadylm in bf16 against the plain loop in fp32, which is nanoGPT on a CPU (its
    train.py autocasts only on CUDA), and against the plain loop in bf16 too. Each eager, then
    compiled with `compile`."""
    pairs = [(False, False)] + ([(True, False), (True, True)] if native_bf16 else [])
    return [
        CompareMode(ours, plain, compiled)
        for compiled in ([False, True] if compile else [False])
        for ours, plain in pairs
    ]


def _compare_in_process(mode: CompareMode, steps: int, warmup: int) -> dict[str, Any]:
    """Runs in a spawned process: steadylm's trainer and the plain loop side by side, their
    timed steps interleaved (steadylm, plain, steadylm, ...) so that load from other processes
    falls on both alike. Returns each side's step times, wall-clock and this process's CPU
    time, and the warm-up steps' time (compilation included)."""
    from steadylm.bench_nanogpt import plain_step
    from steadylm.config import load_config
    from steadylm.train.trainer import Trainer

    over = [
        f'train.precision="{"bf16" if mode.bf16 else "fp32"}"',
        f"train.compile={str(mode.compiled).lower()}",
    ]
    trainer = Trainer(
        load_config(None, [*REFERENCE, *over]), Path(tempfile.mkdtemp()) / "run", progress=False
    )
    plain = plain_step(
        REFERENCE_SHAPE, REFERENCE_BATCH, compile=mode.compiled, bf16=mode.plain_bf16
    )
    sync = _sync_for(trainer.ctx.device)
    step = 1  # typical steps: the periodic monitors first fire at step 50

    def ours() -> None:
        nonlocal step
        float(trainer.train_step(step).row["loss"])
        step += 1

    def theirs() -> None:
        float(plain())

    times: dict[str, list[float]] = {"steadylm": [], "plain": []}
    cpu: dict[str, list[float]] = {"steadylm": [], "plain": []}
    warm: dict[str, float] = {}
    for name, fn in (("steadylm", ours), ("plain", theirs)):
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        warm[name] = time.perf_counter() - t0
    for _ in range(steps):
        for name, fn in (("steadylm", ours), ("plain", theirs)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {"times": times, "cpu": cpu, "warmup_s": warm}


def compare_nanogpt(
    steps: int = 6,
    warmup: int = 3,
    compile: bool = True,
    rounds: int = 1,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """steadylm (every default monitor on) against the plain nanoGPT-equivalent loop
    (`steadylm.bench_nanogpt`, no monitors) at the reference config, in the precisions of
    `compare_modes`, eager and, with `compile`, both compiled. Each round is one fresh process
    per mode with the two loops' steps interleaved; a round's ratio is the median over steps of
    plain step time / steadylm step time taken pairwise, robust to a machine whose load changes
    during the comparison, and the ratio reported is the median over rounds (the ratio moves
    between processes more than within one).
    On a CPU the same ratio of CPU time is given too: with one thread it is what the step costs
    whatever other processes take of the machine."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hardware = probe(device)
    out: dict[str, Any] = {
        "device": str(device),
        "processor": processor_name(device),
        "hardware": hardware.as_dict(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": rounds,
        "rows": {},
    }
    for mode in compare_modes(hardware.native_bf16, compile):
        measured = []
        for i in range(rounds):
            progress(
                f"compare nanogpt: steadylm and the plain loop, {mode.label}, round {i + 1}/{rounds}"
            )
            with mp.get_context("spawn").Pool(1) as pool:
                warm = warmup + (2 if mode.compiled else 0)
                measured.append(pool.apply(_compare_in_process, (mode, steps, warm)))
        out["rows"][mode.label] = compare_row(measured, cpu=device.type == "cpu")
    return out


def compare_row(rounds: list[dict[str, Any]], cpu: bool) -> dict[str, Any]:
    """One configuration's figures from its rounds (each `_compare_in_process`'s step times):
    tokens/s from the median step over all rounds, the ratio as the median of the rounds' median
    pairwise ratios, its range over all pairs, and each round's ratio."""
    tokens = REFERENCE_BATCH * REFERENCE_SHAPE["block_size"]

    def joined(kind: str, side: str) -> list[float]:
        return [t for r in rounds for t in r[kind][side]]

    def pair_ratios(r: dict[str, Any], kind: str) -> list[float]:
        return [p / o for o, p in zip(r[kind]["steadylm"], r[kind]["plain"], strict=True)]

    round_pairs = [pair_ratios(r, "times") for r in rounds]
    per_round = [statistics.median(x) for x in round_pairs]
    per_round_cpu = [statistics.median(pair_ratios(r, "cpu")) for r in rounds]
    pairs = [x for each in round_pairs for x in each]
    ours_s, plain_s = (statistics.median(joined("times", k)) for k in ("steadylm", "plain"))
    return {
        "steadylm_step_s": ours_s,
        "plain_step_s": plain_s,
        "steadylm_tokens_per_s": tokens / ours_s,
        "plain_tokens_per_s": tokens / plain_s,
        "ratio": statistics.median(per_round),
        "ratio_min": min(pairs),
        "ratio_max": max(pairs),
        "round_ratios": per_round,
        "cpu_ratio": statistics.median(per_round_cpu) if cpu else None,
        "round_cpu_ratios": per_round_cpu if cpu else None,
        "steadylm_cpu_s": statistics.median(joined("cpu", "steadylm")),
        "plain_cpu_s": statistics.median(joined("cpu", "plain")),
        "steadylm_times_s": joined("times", "steadylm"),
        "plain_times_s": joined("times", "plain"),
        "steadylm_cpu_times_s": joined("cpu", "steadylm"),
        "plain_cpu_times_s": joined("cpu", "plain"),
        "warmup_s": [r["warmup_s"] for r in rounds],
    }


def format_compare(r: dict[str, Any]) -> str:
    lines = [
        f"steadylm vs a nanoGPT-equivalent loop on {r['device']} ({r['processor']}), "
        f"{r['threads']} threads, torch {r['torch']}",
        _hardware_line(r.get("hardware")),
        "reference config (GPT-2 vocab, 6 x 256, 4 heads, block 256, batch 8); steadylm with "
        "every default monitor on (typical steps), the plain loop with none; each run names "
        "steadylm's precision, then the plain loop's where it differs (the plain loop in fp32 is "
        "nanoGPT on a CPU, which autocasts only on CUDA):",
        f"{'run':<26} {'steadylm tok/s':>15} {'plain tok/s':>12} {'ratio':>7}  (range)  CPU-time ratio",
    ]
    for label, row in r["rows"].items():
        cpu = f"{row['cpu_ratio']:.2f}x" if row.get("cpu_ratio") is not None else "-"
        lines.append(
            f"{label:<26} {row['steadylm_tokens_per_s']:>15.0f} {row['plain_tokens_per_s']:>12.0f} "
            f"{row['ratio']:>6.2f}x  ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})  {cpu}"
        )
    for label, row in r["rows"].items():
        if len(row["round_ratios"]) > 1:
            per_cpu = row["round_cpu_ratios"] or [None] * len(row["round_ratios"])
            each = ", ".join(
                f"{w:.2f}x" + (f" ({c:.2f}x CPU)" if c is not None else "")
                for w, c in zip(row["round_ratios"], per_cpu, strict=True)
            )
            lines.append(f"{label}, each round: {each}")
    lines.append(
        "(tokens/s from median wall-clock step times; ratio = steadylm's speed over the plain "
        "loop's: the median over pairs of interleaved steps in one process, then over rounds "
        "(fresh processes), with its range over all pairs; the CPU-time ratio is the same from "
        "process CPU time, unaffected by other processes when running one thread)"
    )
    return "\n".join(lines)


def format_tt(tt: dict[str, Any], share: float | None = None) -> str:
    line = (
        f"TT embedding {tt['tt_shape']} rank {tt['tt_rank']} ({tt['tt_params']:,} params), "
        f"per step of {tt['tt_tokens']} tokens, fwd+bwd: gather {tt['tt_gather_s'] * 1000:.1f} ms, "
        f"tied-head reconstruction {tt['tt_full_s'] * 1000:.1f} ms, "
        f"TEV on rebuilt rows {tt['tt_tev_s'] * 1000:.1f} ms "
        f"(dense lookup {tt['dense_lookup_s'] * 1000:.1f} ms)"
    )
    return line if share is None else f"{line}; extra = {share:.3f} of a dense fp32 step"


def _met(value: float | None, op: str, bound: float) -> bool | None:
    """Whether `value` meets the target; None when it was not measured here."""
    if value is None:
        return None
    return {">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]


def _hardware_line(hw: dict[str, Any] | None) -> str:
    if not hw:
        return "hardware: not probed"
    return "hardware: " + Hardware(**{**hw, "flags": tuple(hw["flags"])}).summary()


def format_table(r: dict[str, Any]) -> str:
    g = 1e9
    bf16_peak = r["peak_bf16_flops"]
    lines = [
        f"steadylm bench on {r['device']} ({r.get('processor', '?')}), {r['threads']} threads, torch {r['torch']}",
        _hardware_line(r.get("hardware")),
        f"matmul peak ({PEAK_SHAPE}^3): fp32 {r['peak_fp32_flops'] / g:.0f} GFLOP/s, bf16 "
        + (f"{bf16_peak / g:.0f} GFLOP/s" if bf16_peak else "emulated (bf16 rows skipped)"),
        "",
        *_training_lines(r),
        "",
        f"TEV on 50257 x 768: {r['tev_step_s'] * 1000:.1f} ms per step (exact two-pass: "
        f"{r['tev_exact_s'] * 1000:.0f} ms)",
        f"gradient-variance reference step: {r['training']['fp32']['gradvar_s'] or 0:.3f} s of hooks "
        f"= {r['ratios']['gradvar_over_tev']:.0f} x TEV's every-step cost",
        format_tt(r["tt"], r["ratios"]["tt_tied_extra_share_of_fp32_step"]),
        f"GPT-2 tokenizer: {r['tokenizer_tokens_per_s']:,.0f} tokens/s",
        "",
        "targets:",
        *_target_lines(r),
    ]
    return "\n".join(lines)


def _training_lines(r: dict[str, Any]) -> list[str]:
    """The training-step table, its compile times and the note on what fwd includes."""
    g = 1e9
    lines = [
        "training step at the reference config (GPT-2 vocab, 6 x 256, 4 heads, block 256, batch 8):",
        f"{'run':<20} {'step ms':>8} {'tok/s':>8} {'GFLOP/s':>8} {'peak RSS MB':>12}  data / fwd* "
        "/ bwd / optim / monitors (ms)",
    ]
    for label, m in r["training"].items():
        s = m["sections"]
        parts = " / ".join(
            f"{s.get(k, 0) * 1000:.0f}"
            for k in ("data", "forward", "backward", "optimizer", "monitors")
        )
        lines.append(
            f"{label:<20} {m['step_s'] * 1000:>8.0f} {m['tokens_per_s']:>8.0f} {m['flops_per_s'] / g:>8.0f} "
            f"{m['peak_rss_mb']:>12.0f}  {parts}"
        )
    for label, m in r["training"].items():
        if m.get("compile_s"):
            lines.append(
                f"({label}: the warm-up steps, compilation included, took {m['compile_s']:.0f} s)"
            )
    head = r.get("head", {})
    if head:
        shown = ", ".join(
            f"{k.split('_')[1]} {v * 1000:.0f} ms" for k, v in head.items() if v is not None
        )
        lines.append(
            "* fwd includes the output layer's backward: the fused loss makes the head's "
            f"gradients while its logits are hot. Head and loss, forward and backward: {shown}; "
            "bwd is the blocks' backward alone."
        )
    return lines


def _target_lines(r: dict[str, Any]) -> list[str]:
    """Each target against its measured value, then the monitors' and precisions' figures."""
    lines = []
    for name, t in r["targets"].items():
        if t["value"] is None:
            lines.append(f"  {name:<26} {'-':>8}  (target {t['op']} {t['target']})  not measured")
            continue
        mark = "met" if t["met"] else "NOT met"
        lines.append(f"  {name:<26} {t['value']:>8.3f}  (target {t['op']} {t['target']})  {mark}")
    extra = r["ratios"]
    per = r["training"]["fp32"]["periodic"]
    lines += [
        f"  monitors: every step {extra['monitor_share_every_step']:.4f} of a step, plus periodic steps amortised "
        f"(stats +{per.get('stats_extra_s', 0) * 1000:.0f} ms every {per.get('stats_every')}, activations "
        f"+{per.get('act_extra_s', 0) * 1000:.0f} ms every {per.get('act_every')}, gradient variance "
        f"+{per.get('gradvar_extra_s', 0) * 1000:.0f} ms every {per.get('gradvar_every')})",
        f"  monitor share by A/B (monitors on vs off): {extra['monitor_share_ab']:+.3f}",
    ]
    if extra.get("fp32_compile_speedup") is not None:
        lines.append(f"  fp32 compiled over eager: {extra['fp32_compile_speedup']:.2f} x")
    if extra.get("bf16_speedup_over_fp32_eager") is not None:
        lines.append(
            f"  bf16 eager over fp32: {extra['bf16_speedup_over_fp32_eager']:.2f} x; "
            f"best bf16 run: {r['best_bf16']}"
        )
    lines.append(f"  MLRA / MHA peak RSS: {extra['mlra_over_mha_peak_rss']:.3f}")
    return lines
