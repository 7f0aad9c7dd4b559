"""The training loop: data, model, AdamW, monitoring, evaluation, checkpoints, exact resume.

One optimizer step consumes `train.batch_size` sequences globally. Each rank takes its slice
and runs it in micro-batches of `train.micro_batch_size`; every micro-batch's summed token loss
is divided by the global token count of the step, so gradients do not depend on how the batch is
split across micro-batches or ranks.

All of a trainer's state is built in `Trainer.__init__`; what a checkpoint holds is listed in
`Trainer.checkpoint_components`. `train_step(step)` runs one optimizer step in three stages:
`_accumulate` (micro-batch forward and backward), `_reduce` (gradients and loss summed over
ranks, unscaled, measured) and `_update` (the guards' verdict, clipping and the optimizer step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from steadylm import rundir
from steadylm.config import Config, config_from_dict
from steadylm.data.prepare import PreparedData, prepare
from steadylm.data.reader import SequenceReader, eval_sequences
from steadylm.errors import DataError, SteadyLMError
from steadylm.hardware import probe
from steadylm.model.gpt import GPT
from steadylm.model.taps import BlockTaps
from steadylm.model.tt_embedding import TTEmbedding
from steadylm.model.tt_embedding import describe as describe_tt
from steadylm.monitor.tev import tev_histogram
from steadylm.provenance import provenance
from steadylm.train import faults
from steadylm.train.checkpoint import Component, load_checkpoint, prune_checkpoints, save_checkpoint
from steadylm.train.distributed import DistContext, init_distributed, shutdown
from steadylm.train.execution import AUTOCAST, resolve_compile, resolve_precision
from steadylm.train.metrics import MetricsLog, truncate_metrics
from steadylm.train.monitoring import TrainingMonitors, Verdict
from steadylm.train.optim import build_optimizer, lr_at
from steadylm.train.regularizers import penalty_sum
from steadylm.train.schedule import checkpoint_due
from steadylm.train.state import ModelWeights, OptimizerState, Progress, RNGState
from steadylm.train.timing import StepTimer

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

    from steadylm.monitor.sinks import TensorBoardSink

TEV_HISTOGRAM_BINS = 50

# Keys of [train] that may change on --resume: they do not alter the optimisation trajectory
# up to the checkpoint (max_steps reshapes the schedule ahead, which is what extending a run means).
RESUMABLE_TRAIN_KEYS = {
    "max_steps",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "compile",
    "precision_strict",
    "device",
    "checkpoint_schedule",
}


@dataclass
class RunResult:
    run_dir: Path
    status: str
    step: int
    val_loss: float | None
    val_ppl: float | None
    tev_mean: float | None
    tev_std: float | None
    checkpoint: Path | None


@dataclass
class StepOutcome:
    """One optimizer step: its metrics row (values may be device tensors until the flush), the
    guards' verdict, and whether the update was skipped (a skipped step still advances step,
    tokens, schedule and data)."""

    row: dict[str, Any]
    verdict: Verdict
    skipped: bool


@dataclass
class _Sums:
    """A rank's sums over the micro-batches of one step, on the device."""

    loss: torch.Tensor  # cross-entropy, summed over tokens
    z: torch.Tensor  # Σ log²Z
    reg: torch.Tensor  # the linearity penalty, summed over tokens
    # The last micro-batch's inputs, of which the activation probe reads one sequence.
    last_x: torch.Tensor | None = None


class Trainer:
    """Trains one run into `out`; `fit()` returns a RunResult. Building it prepares the data and
    builds the model, optimizer and monitors; `fit()` restores (with `resume`) and trains."""

    def __init__(
        self,
        cfg: Config,
        out: str | Path,
        resume: bool = False,
        progress: bool = True,
        stop_at: int | None = None,
    ):
        self.cfg = cfg
        self.run_dir = Path(out)
        self.resume = resume
        self.progress = progress
        self.stop_at = stop_at
        self.ctx: DistContext = init_distributed(cfg.train.device)
        try:
            self.timer = StepTimer(self.ctx.device)  # enabled by `steadylm bench` only
            self._check_run_dir()
            hw = probe(self.ctx.device)
            self.hardware = dataclasses.replace(hw, native_bf16=self._all_ranks(hw.native_bf16))
            self.resumed = self._resumed_provenance()
            self.precision = resolve_precision(cfg, self.hardware, self.resumed)
            self.autocast_dtype = AUTOCAST[self.precision]
            self._setup_data(progress)
            self._setup_model()
            self.position = Progress(
                self.reader, self.ctx.world_size, cfg.train.batch_size * cfg.model.block_size
            )
            self.components = self.checkpoint_components()
            # Dropout draws differ per rank; after the shared init, each rank gets its own stream.
            torch.manual_seed(cfg.train.seed + 1 + self.ctx.rank)
        except BaseException:
            shutdown(self.ctx)
            raise
        self._started = False  # set once this process owns the run's status
        self._signal_received = False
        self._reset_loop_state()

    def _setup_data(self, progress: bool) -> None:
        """The tokenized splits, the training cursor, and the micro-batches per rank and step."""
        cfg = self.cfg
        self.data = prepare(cfg.data, progress=progress and self.ctx.is_main)
        self.vocab_rows = self._resolve_vocab(self.data)  # rows past the tokenizer are padding
        self.reader = SequenceReader(self.data.train, cfg.model.block_size, seed=cfg.train.seed)
        self.val_tokens = self.data.val
        self.grad_accum = self._check_batch()

    def _setup_model(self) -> None:
        """The model (same init on every rank), its parallel wrapper, the optimizer, optional
        compilation and loss scaling, the training monitors and the linearity taps."""
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)  # the same init on every rank
        self.model = GPT(cfg.model).to(self.ctx.device)
        wte = self.model.transformer.wte
        if isinstance(wte, TTEmbedding) and self.ctx.is_main:  # model.embedding = "tt"
            print(f"steadylm: {describe_tt(wte)}", file=sys.stderr)
        self.fsdp = self.ctx.enabled and cfg.train.parallel == "fsdp"
        if self.fsdp and cfg.model.embedding == "tt":
            raise SteadyLMError(
                "train.parallel='fsdp' does not support model.embedding='tt'; use "
                "train.parallel='ddp' (the TT cores are small enough to replicate on every rank)"
            )
        self.ddp: DistributedDataParallel | None = None  # the DDP wrapper, under torchrun
        self.forward_model = self._parallelize()
        # Built after sharding: under FSDP2 the optimizer must hold the sharded parameters.
        self.optimizer = build_optimizer(self.model, cfg.train, self.ctx.device)
        self.compile, self.compile_reason = resolve_compile(
            cfg,
            self.hardware,
            self.precision,
            self.model.flops_per_token(),
            self.ctx.world_size,
            self.resumed,
        )
        everywhere = self._all_ranks(self.compile)  # a collective: every rank calls it
        if self.compile and not everywhere:
            self.compile, self.compile_reason = False, "auto: another rank's estimate said off"
        if self.compile:
            # An OptimizedModule, an nn.Module; the stubs type compile's result as a callable.
            self.forward_model = cast(torch.nn.Module, torch.compile(self.forward_model))
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.monitors = TrainingMonitors(
            self.model, cfg.monitor, self.vocab_rows, self.ctx, self.fsdp, self._token_counts()
        )
        # The linearity regulariser reads the residual stream between blocks; None leaves the
        # forward pass exactly as without it.
        self.taps = (
            BlockTaps(self.model.transformer.h, detach=False)
            if cfg.train.linearity_reg > 0
            else None
        )

    def _reset_loop_state(self) -> None:
        """The loop's own state, set at the start of every fit()."""
        self.tensorboard: TensorBoardSink | None = None
        self._last: dict[str, Any] = {}  # the latest value of every metric, for the result
        self._t_flush, self._steps_since = time.perf_counter(), 0  # throughput since the last flush
        self._last_ckpt: Path | None = None
        self._stop_reason: str | None = None  # why the guards stopped the run

    def checkpoint_components(self) -> list[Component]:
        """Everything a checkpoint holds, in the order it is saved and restored (see
        `steadylm.train.checkpoint`); a job with more state appends its own components."""
        components = [
            Component(
                "model",
                "model.safetensors",
                ModelWeights(self.model, self.ctx, self.fsdp),
                "safetensors",
            ),
            Component(
                "optimizer", "train_state/optim", OptimizerState(self.model, self.optimizer), "dcp"
            ),
            Component("progress", "train_state/trainer.json", self.position, "json"),
            Component(
                "monitors", "train_state/monitors.pt", self.monitors, "torch", required=False
            ),
        ]
        if self.scaler is not None:
            components.append(
                Component(
                    "grad_scaler", "train_state/scaler.pt", self.scaler, "torch", required=False
                )
            )
        rng = RNGState(
            self.ctx.device
        )  # last: restoring it is the final step before training resumes
        components.append(
            Component("rng", "train_state/rng_rank{rank}.pt", rng, "per_rank", required=False)
        )
        return components

    # ----------------------------------------------------------------- set-up

    def _check_run_dir(self) -> None:
        cfg_path = self.run_dir / rundir.CONFIG
        if self.resume:
            if not cfg_path.is_file():
                raise SteadyLMError(
                    f"--resume: {self.run_dir} holds no steadylm run (no config.toml)"
                )
        elif self.run_dir.exists() and any(self.run_dir.iterdir()):
            what = "a steadylm run" if cfg_path.is_file() else "other files"
            raise SteadyLMError(
                f"--out: {self.run_dir} already holds {what}; pass --resume to continue it or choose another folder"
            )

    def _check_resume_compatible(self, saved: Config) -> None:
        for section in ("model", "data", "monitor"):
            if getattr(saved, section) != getattr(self.cfg, section):
                a, b = getattr(saved, section), getattr(self.cfg, section)
                diff = [k for k in a.__dataclass_fields__ if getattr(a, k) != getattr(b, k)]
                raise SteadyLMError(
                    f"--resume: {section}.{diff[0]} differs from the run's config "
                    f"({getattr(a, diff[0])!r} vs {getattr(b, diff[0])!r}); it cannot change mid-run"
                )
        for key in saved.train.__dataclass_fields__:
            if key not in RESUMABLE_TRAIN_KEYS and getattr(saved.train, key) != getattr(
                self.cfg.train, key
            ):
                raise SteadyLMError(
                    f"--resume: train.{key} differs from the run's config "
                    f"({getattr(saved.train, key)!r} vs {getattr(self.cfg.train, key)!r}); "
                    f"only {', '.join(sorted(RESUMABLE_TRAIN_KEYS))} may change"
                )

    def _all_ranks(self, flag: bool) -> bool:
        """True only if every rank says so. Each rank times its own hardware probe, and the
        ranks must still choose one precision and one compile setting."""
        if not self.ctx.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.ctx.device)
        return bool(self.ctx.all_reduce_sum(t).item() == self.ctx.world_size)

    def _resumed_provenance(self) -> dict | None:
        """On --resume, the run's provenance.json: "auto" precision and compile keep the choices
        it recorded at the start, whatever this host would choose."""
        path = self.run_dir / rundir.PROVENANCE
        if not (self.resume and path.is_file()):
            return None
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return recorded if isinstance(recorded, dict) else None

    def _resolve_vocab(self, data: PreparedData) -> int:
        """Fills model.vocab_size = 0 from the tokenizer; returns the tokenizer's size (TEV's rows)."""
        n_tok = data.tokenizer.vocab_size
        if self.cfg.model.vocab_size == 0:
            self.cfg.model.vocab_size = n_tok
        elif self.cfg.model.vocab_size < n_tok:
            raise DataError(
                f"model.vocab_size={self.cfg.model.vocab_size} is smaller than the tokenizer's {n_tok} tokens "
                f"({data.tokenizer.name}); use 0 to take it from the tokenizer"
            )
        return n_tok

    def _token_counts(self) -> torch.Tensor | None:
        """Occurrences of each real token id in the training split, for frequency-group TEV."""
        if not self.cfg.monitor.tev_freq_groups:
            return None
        counts = np.bincount(self.data.train, minlength=self.vocab_rows)[: self.vocab_rows]
        return torch.from_numpy(counts)

    def _check_batch(self) -> int:
        """Checks the validation split and the batch shape; returns micro-batches per rank, step."""
        cfg, T = self.cfg, self.cfg.model.block_size
        if (len(self.val_tokens) - 1) // T < 1:
            raise DataError(
                f"the validation split has {len(self.val_tokens)} tokens; it needs at least block_size+1={T + 1} "
                "(lower model.block_size or raise data.val_fraction)"
            )
        per_rank, rem = divmod(cfg.train.batch_size, self.ctx.world_size)
        if rem or per_rank % cfg.train.micro_batch_size:
            raise SteadyLMError(
                f"train.batch_size: {cfg.train.batch_size} is not divisible by micro_batch_size "
                f"({cfg.train.micro_batch_size}) x world size ({self.ctx.world_size})"
            )
        return per_rank // cfg.train.micro_batch_size

    def _parallelize(self) -> torch.nn.Module:
        """Shards the model (FSDP2) or wraps it (DDP) under torchrun; returns the module to call."""
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in self.model.transformer.h:
                fully_shard(block)
            fully_shard(self.model)  # embeddings, ln_f and the tied head
            return self.model
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=device_ids)
            return self.ddp
        return self.model

    def _write_run_files(self) -> None:
        rd = self.run_dir
        rd.mkdir(parents=True, exist_ok=True)
        (rd / rundir.CONFIG).write_text(self.cfg.to_toml())
        info = provenance(
            self.ctx.device,
            world_size=self.ctx.world_size,
            precision=self.precision,
            compile=self.compile,
            compile_reason=self.compile_reason,
            dataset=str(self.data.dir),
            # Parameter counts (tied head once): what a loss-vs-embedding-size comparison needs.
            parameters=self.model.num_parameters(),
            embedding_parameters=sum(p.numel() for p in self.model.transformer.wte.parameters()),
        )
        (rd / rundir.PROVENANCE).write_text(json.dumps(info, indent=1) + "\n")

    def _set_status(self, status: str, **extra: Any) -> None:
        if self.ctx.is_main:
            rundir.write_status(self.run_dir, status, **extra)

    def _restore(self) -> int:
        """Load the latest verified checkpoint; returns the step to continue from."""
        saved = config_from_dict(_read_toml(self.run_dir / rundir.CONFIG))
        self._check_resume_compatible(saved)
        ckpt = rundir.latest_checkpoint(self.run_dir, quiet=not self.ctx.is_main)
        if ckpt is None:  # killed before the first checkpoint: start over in the same folder
            if self.ctx.is_main:
                truncate_metrics(self.run_dir / rundir.METRICS, -1)
            return 0
        step = self._load_checkpoint(ckpt)
        if self.ctx.is_main:
            truncate_metrics(self.run_dir / rundir.METRICS, step - 1)
        return step

    def _load_checkpoint(self, ckpt: Path) -> int:
        """Every checkpoint component from `ckpt`; returns its step."""
        from steadylm.data.tokenizer import Tokenizer
        from steadylm.errors import CheckpointError

        if (
            Tokenizer.load(ckpt / "tokenizer.json").fingerprint()
            != self.data.tokenizer.fingerprint()
        ):
            raise CheckpointError(
                f"{ckpt}: its tokenizer does not match the data's ({self.data.tokenizer.name})"
            )
        restored = load_checkpoint(ckpt, self.components, self.ctx)
        step = self.position.step
        if "rng" not in restored:
            if self.ctx.is_main:
                print(
                    f"steadylm: {ckpt.name} was saved with world size {self.position.saved_world_size}, now "
                    f"{self.ctx.world_size}: weights, optimizer and data cursor resume exactly; dropout "
                    "random streams are re-seeded, so losses are not bit-identical to an uninterrupted run",
                    file=sys.stderr,
                )
            torch.manual_seed(self.cfg.train.seed + 1 + self.ctx.rank + step * 7919)
        return step

    # ---------------------------------------------------------------- the step

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.autocast_dtype)

    def train_step(self, step: int) -> StepOutcome:
        """One optimizer step at `step` (0-based): the schedule's lr, the next global batch, then
        forward/backward per micro-batch, gradient reduction, and the guarded update."""
        cfg = self.cfg
        lr = lr_at(step, cfg.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.timer.section("data"):
            x_all, y_all = self.reader.next_batch(
                cfg.train.batch_size, self.ctx.rank, self.ctx.world_size
            )
        sums = self._accumulate(step, x_all, y_all)
        faults.crash_if_armed("mid-step", step)
        tokens_global = cfg.train.batch_size * cfg.model.block_size
        loss = self.ctx.all_reduce_sum(sums.loss) / tokens_global
        row: dict[str, Any] = {
            "step": step,
            "tokens": (step + 1) * tokens_global,
            "loss": loss,
            "lr": lr,
        }
        if self.monitors.probe_gradvar(self.grad_accum, step):
            self._gradvar_probe(row, x_all, y_all)
        params, total_norm = self._reduce(row, sums, tokens_global)
        verdict, skip = self._update(step, row, params, total_norm)
        assert sums.last_x is not None  # set by _accumulate's last micro-batch
        with self.timer.section("monitors"):
            self.monitors.activations(row, step, sums.last_x)
        if skip:
            row["skipped"] = True
        return StepOutcome(row, verdict, skip)

    def _accumulate(self, step: int, x_all: torch.Tensor, y_all: torch.Tensor) -> _Sums:
        """Forward and backward of each micro-batch of this rank's slice; gradients accumulate in
        `.grad` and are reduced across ranks during the last micro-batch's backward."""
        cfg, mon, timed, n_micro = self.cfg, self.monitors, self.timer.section, self.grad_accum
        mb, T = x_all.shape[0] // n_micro, x_all.shape[1]
        # DDP averages gradients over ranks; scaling by world size turns that into a sum, so
        # the gradient is that of the summed token loss over the global batch / global tokens.
        scale = self.ctx.world_size / (cfg.train.batch_size * T)
        with timed("monitors"):
            # With that scale, each backward carries 1/n_micro of its micro-batch's mean-loss
            # gradient.
            mon.begin_step(step, n_micro, self._unscaled(n_micro))
        zero = torch.zeros((), device=self.ctx.device)
        sums = _Sums(loss=zero.clone(), z=zero.clone(), reg=zero.clone())
        for i in range(n_micro):
            with timed("data"):
                x = x_all[i * mb : (i + 1) * mb].to(self.ctx.device, non_blocking=True)
                y = y_all[i * mb : (i + 1) * mb].to(self.ctx.device, non_blocking=True)
            with timed("monitors"):
                mon.observe(x)
            with self._grad_sync(last_micro=i == n_micro - 1):
                objective, log_z_sq, penalty = self._backward(self.forward_model, x, y, scale)
            sums.loss += objective - cfg.train.z_loss * log_z_sq  # cross-entropy alone
            sums.z += log_z_sq
            if penalty is not None:
                sums.reg += penalty
        sums.last_x = x
        return sums

    def _unscaled(self, factor: float) -> float | torch.Tensor:
        """`factor` over the fp16 grad scaler's scale (the gradients carry it), if there is one."""
        return factor if self.scaler is None else factor / self.scaler.get_scale()

    def _grad_sync(self, last_micro: bool):
        """Reduce gradients across ranks only in the last micro-batch's backward."""
        if self.fsdp:
            from torch.distributed.fsdp import FSDPModule

            assert isinstance(self.model, FSDPModule)  # made one by fully_shard
            self.model.set_requires_gradient_sync(last_micro)  # reduce-scatter once per step
        elif self.ctx.enabled and not last_micro:
            assert self.ddp is not None  # torchrun without FSDP: _parallelize wrapped it
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def _backward(
        self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Forward of one micro-batch through `module`, then backward of its objective (plus the
        linearity penalty) times `scale`; returns the detached objective, Σ log²Z and penalty
        sums."""
        with self.timer.section("forward"), self._autocast():
            objective, log_z_sq, penalty = self._forward(module, x, y)
        with self.timer.section("backward"):
            total = (
                objective if penalty is None else objective + self.cfg.train.linearity_reg * penalty
            )
            if self.scaler is not None:
                self.scaler.scale(total * scale).backward()
            else:
                (total * scale).backward()
        return objective.detach(), log_z_sq, None if penalty is None else penalty.detach()

    def _forward(
        self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Summed objective and Σ log²Z of a micro-batch, and the linearity penalty summed over
        tokens (None when train.linearity_reg is 0, which leaves the forward pass untouched)."""
        z_loss = self.cfg.train.z_loss
        if self.taps is None:
            return *module(x, targets=y, z_loss=z_loss), None
        with self.taps:
            objective, log_z_sq = module(x, targets=y, z_loss=z_loss)
        states = [s for s in self.taps.states if s is not None]
        assert len(states) == len(self.taps.states)  # the forward pass filled every tap
        penalty = penalty_sum(states, self.cfg.train.linearity_reg_kind)
        self.taps.states = []  # the graph lives on in `penalty` until the backward, not here
        return objective, log_z_sq, penalty

    def _gradvar_probe(self, row: dict[str, Any], x_all: torch.Tensor, y_all: torch.Tensor) -> None:
        """The gradient-variance reference outside the step (see TrainingMonitors.probe_gradvar):
        two extra backward passes over the halves of the rank's batch, each read from `.grad`.
        The step's gradients are set aside meanwhile and its random streams forked, so the update
        is exactly the one without the reference (at the cost of one more forward and backward of
        the batch). Under DDP the passes use the unwrapped model and reduce nothing; under FSDP2
        they reduce-scatter like any backward, on every rank."""
        half = x_all.shape[0] // 2
        if half == 0:
            return  # one sequence per rank: nothing to split
        params = [p for p in self.model.parameters() if p.requires_grad]
        kept = [p.grad for p in params]
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with self.timer.section("monitors"), torch.random.fork_rng(devices=devices):
            self.monitors.begin_probe(self._unscaled(1.0))
            for part in (slice(0, half), slice(half, 2 * half)):
                for p in params:
                    p.grad = None
                x, y = x_all[part].to(self.ctx.device), y_all[part].to(self.ctx.device)
                self._backward(self.model, x, y, 1.0 / x.numel())  # each half's mean loss
                self.monitors.record_probe()
            self.monitors.after_backward(row)
        for p, g in zip(params, kept):
            p.grad = g

    def _reduce(
        self, row: dict[str, Any], sums: _Sums, tokens_global: int
    ) -> tuple[list[torch.nn.Parameter], torch.Tensor]:
        """After the backward passes: monitors' gradient figures, the grad scaler's unscale, the
        gradient norm, and the loss terms summed over ranks. Returns the parameters with a
        gradient and their total norm (a DTensor under FSDP2)."""
        cfg = self.cfg
        with self.timer.section("monitors"):
            self.monitors.after_backward(row)
        with self.timer.section("optimizer"):
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            total_norm = self.monitors.gradient_norm(
                row, params
            )  # clipping needs it; per-block norms come free
            # the logged and judged norm is the full one
            row["grad_norm"] = (
                total_norm.full_tensor() if hasattr(total_norm, "full_tensor") else total_norm
            )
        if cfg.train.z_loss > 0:  # the term added
            row["z_loss"] = cfg.train.z_loss * self.ctx.all_reduce_sum(sums.z) / tokens_global
        if self.taps is not None:  # the term added
            row["linearity_reg"] = (
                cfg.train.linearity_reg * self.ctx.all_reduce_sum(sums.reg) / tokens_global
            )
        return params, total_norm

    def _update(
        self,
        step: int,
        row: dict[str, Any],
        params: list[torch.nn.Parameter],
        total_norm: torch.Tensor,
    ) -> tuple[Verdict, bool]:
        """The guards' verdict, then (unless it says skip) clipping and the optimizer step."""
        cfg, timed = self.cfg, self.timer.section
        with timed("monitors"):
            # fp16 gradients overflow now and then by design and the grad scaler skips those steps
            # itself, so under fp16 the guards judge the loss alone.
            verdict = self.monitors.judge(
                step, row["loss"], row["grad_norm"] if self.scaler is None else None
            )
            skip = verdict.non_finite or (verdict.spike and cfg.monitor.on_spike == "skip")
            self.monitors.before_update(step)
        with timed("optimizer"):
            if not skip:
                if (
                    cfg.train.grad_clip > 0
                ):  # judged first: clipping by a NaN norm would smear NaN over every gradient
                    torch.nn.utils.clip_grads_with_norm_(params, cfg.train.grad_clip, total_norm)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.model.after_optimizer_step()  # σReparam's power iteration; a no-op otherwise
            self.optimizer.zero_grad(set_to_none=True)
        with timed("monitors"):
            self.monitors.after_update(row, step, updated=not skip)
        return verdict, skip

    # ---------------------------------------------------------- evaluation, saving

    @torch.no_grad()
    def evaluate(self) -> torch.Tensor:
        """Mean token loss on a fixed set of validation sequences (the same at every evaluation)."""
        cfg = self.cfg
        T = cfg.model.block_size
        n_seq = min(
            (len(self.val_tokens) - 1) // T, cfg.train.eval_batches * cfg.train.micro_batch_size
        )
        batches = eval_sequences(
            self.val_tokens,
            T,
            n_seq,
            cfg.train.micro_batch_size,
            self.ctx.rank,
            self.ctx.world_size,
        )
        self.model.eval()
        total = torch.zeros((), device=self.ctx.device)
        for x, y in batches:
            x, y = x.to(self.ctx.device), y.to(self.ctx.device)
            with self._autocast():
                total += self.model(x, targets=y)[0]  # the cross-entropy sum (no z-loss term)
        self.model.train()
        return self.ctx.all_reduce_sum(total) / (n_seq * T)

    def _save(self, step_done: int) -> Path:
        """Checkpoint after `step_done` optimizer steps."""
        self.position.step = step_done
        files: dict[str, str | Path] = {
            rundir.CONFIG: self.cfg.to_toml(),
            "tokenizer.json": self.data.dir / "tokenizer.json",
        }
        path = save_checkpoint(self.run_dir, step_done, self.components, files, self.ctx)
        if self.ctx.is_main:
            prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
        return path

    # ------------------------------------------------------------- guards, logging

    def _react(
        self, step: int, row: dict[str, Any], verdict: Verdict, metrics: MetricsLog
    ) -> int | None:
        """Record guard events and act on them; returns the step to go back to after a rollback."""
        mon_cfg = self.cfg.monitor
        if verdict.non_finite:
            metrics.record(
                {
                    "event": "non_finite",
                    "step": step,
                    "param": verdict.param,
                    "loss": row["loss"],
                    "grad_norm": row["grad_norm"],
                    "action": "skip",
                }
            )
            if self.monitors.nonfinite_streak >= mon_cfg.nonfinite_patience:
                good = rundir.latest_checkpoint(self.run_dir, quiet=True)
                self._stop_reason = (
                    f"non-finite loss or gradient for {self.monitors.nonfinite_streak} steps in a row (step {step}, "
                    f"first in {verdict.param}); the last good checkpoint is {good or 'none'}"
                )
            return None
        if not verdict.spike:
            return None
        action = mon_cfg.on_spike
        if action == "rollback":
            target = rundir.latest_checkpoint(self.run_dir, quiet=True)
            if target is None or self.monitors.rollbacks >= mon_cfg.max_rollbacks:
                if target is not None:
                    self._stop_reason = (
                        f"loss spike at step {step} after {mon_cfg.max_rollbacks} rollbacks "
                        "(monitor.max_rollbacks)"
                    )
                    action = "stop"
                else:
                    action = "log (no checkpoint to roll back to yet)"
        metrics.record(
            {
                "event": "spike",
                "step": step,
                "loss": row["loss"],
                "grad_norm": row["grad_norm"],
                "action": action,
            }
        )
        if action != "rollback":
            return None
        assert target is not None  # the action stays "rollback" only with a checkpoint
        return self._rollback(step, target, metrics)

    def _rollback(self, step: int, ckpt: Path, metrics: MetricsLog) -> int:
        """Reload `ckpt` and skip the data the run saw between it and the spike (PaLM's remedy)."""
        cursor = self.reader.state_dict()  # just past the offending batch
        rollbacks = self.monitors.rollbacks + 1
        self._flush(metrics, None)
        to_step = self._load_checkpoint(ckpt)
        skipped = (step + 1 - to_step) * self.cfg.train.batch_size
        self.reader.load_state_dict(cursor)
        self.monitors.rollbacks = rollbacks
        if self.ctx.is_main:
            truncate_metrics(self.run_dir / rundir.METRICS, to_step - 1, keep_events=True)
        metrics.record(
            {"event": "rollback", "step": step, "to_step": to_step, "skipped_sequences": skipped}
        )
        self._flush(metrics, None)
        return to_step

    def _record_tev_histogram(self, step: int, metrics: MetricsLog) -> None:
        values = self.monitors.tev_values()
        counts, edges = tev_histogram(values, bins=TEV_HISTOGRAM_BINS)
        metrics.record(
            {
                "event": "tev_histogram",
                "step": step,
                "counts": counts.tolist(),
                "edges": edges.tolist(),
            }
        )
        if self.tensorboard is not None:
            self.tensorboard.histogram("tev", values, step)

    def _flush(self, metrics: MetricsLog, bar) -> list[dict[str, Any]]:
        """One host sync: finish the pending rows, write them, update the sinks and progress bar."""
        now = time.perf_counter()
        tps = (
            self._steps_since
            * self.cfg.train.batch_size
            * self.cfg.model.block_size
            / max(now - self._t_flush, 1e-9)
        )
        for r in metrics.pending:
            if "event" in r:
                continue
            r["tokens_per_s"] = tps
            if "val_loss" in r:
                r["val_ppl"] = torch.exp(r["val_loss"])
        rows = [r for r in metrics.flush() if "event" not in r]
        self._t_flush, self._steps_since = now, 0
        if not rows:
            return rows
        for r in rows:
            self._last.update(r)
        if self.tensorboard is not None:
            self.tensorboard.scalars(rows)
        if bar is not None:
            last = self._last
            bar.update(rows[-1]["step"] + 1 - bar.n)
            bar.set_postfix_str(
                f"loss {last['loss']:.4f} | gnorm {last['grad_norm']:.3f} | "
                f"tev {last.get('tev_mean', float('nan')):.5f} | {tps:,.0f} tok/s"
            )
        return rows

    def _stop_requested(self) -> bool:
        """True once SIGINT/SIGTERM arrived on any rank (all ranks agree, so all save together)."""
        flag = self._signal_received
        if self.ctx.enabled:
            t = torch.tensor([float(flag)], device=self.ctx.device)
            flag = bool(self.ctx.all_reduce_sum(t).item())
        return flag

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT/SIGTERM finish the current step, save a checkpoint and stop (status "stopped")."""
        self._signal_received = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            self._signal_received = True

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def fit(self) -> RunResult:
        try:
            with self._signals():
                result = self._fit()
        except BaseException as e:
            if self._started:  # never mark a run this process did not get to train as failed
                self._set_status("failed", error=f"{type(e).__name__}: {e}")
            # No teardown of the process group here: another rank may still be inside a
            # collective, and destroying the group under it can deadlock both; exiting frees it.
            raise
        shutdown(self.ctx, synchronise=True)
        return result

    def _fit(self) -> RunResult:
        cfg = self.cfg
        start = self._restore() if self.resume else 0
        if self.ctx.is_main:  # after the checks that may refuse the run, each one line
            print(
                f"steadylm: {self.hardware.summary()}; precision {self.precision}, "
                f"compile {'on' if self.compile else 'off'} ({self.compile_reason})",
                file=sys.stderr,
            )
            if not self.resume:
                self._write_run_files()
            self._set_status("running", step=start)
        self._started = True
        self._reset_loop_state()
        metrics = MetricsLog(self.run_dir / rundir.METRICS, enabled=self.ctx.is_main)
        if cfg.monitor.tensorboard and self.ctx.is_main:
            from steadylm.monitor.sinks import TensorBoardSink

            self.tensorboard = TensorBoardSink(self.run_dir / "tensorboard")
        end = (
            cfg.train.max_steps if self.stop_at is None else min(cfg.train.max_steps, self.stop_at)
        )
        bar = None
        if self.progress and self.ctx.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.train.max_steps,
                initial=start,
                desc=self.run_dir.name,
                unit="step",
                dynamic_ncols=True,
            )
        self.model.train()
        status = self._loop(start, end, metrics, bar)
        if bar is not None:
            bar.close()
        return self._finish(status, start, end)

    def _loop(self, step: int, end: int, metrics: MetricsLog, bar) -> str:
        """Train from `step` to `end`; returns the status the loop ended with."""
        cfg = self.cfg
        while step < end:
            out = self.train_step(step)
            metrics.record(out.row)
            self._steps_since += 1
            rollback_to = self._react(step, out.row, out.verdict, metrics)
            if self._stop_reason:
                self._flush(metrics, bar)
                return "diverged"
            if rollback_to is not None:
                step = rollback_to
                continue
            is_last = step + 1 == end
            if cfg.train.eval_every and (
                (step + 1) % cfg.train.eval_every == 0 or step + 1 == cfg.train.max_steps
            ):
                out.row["val_loss"] = self.evaluate()
                self._record_tev_histogram(step, metrics)
            interrupted = self._stop_requested()
            if (step + 1) % cfg.train.log_every == 0 or is_last or interrupted:
                self._flush(metrics, bar)
            if checkpoint_due(step + 1, cfg.train) or is_last or interrupted:
                self._last_ckpt = self._save(step + 1)
            step += 1
            if interrupted:
                return "stopped"
        return "running"

    def _finish(self, status: str, start: int, end: int) -> RunResult:
        if status == "running":
            status = "finished" if end == self.cfg.train.max_steps else "stopped"
        if self._stop_reason and self.ctx.is_main:
            print(f"steadylm: {self._stop_reason}", file=sys.stderr)
        last = self._last
        final_step = last.get("step", start - 1) + 1
        extra = {"reason": self._stop_reason} if self._stop_reason else {}
        checkpoint = str(self._last_ckpt) if self._last_ckpt else None
        self._set_status(status, step=final_step, checkpoint=checkpoint, **extra)
        return RunResult(
            run_dir=self.run_dir,
            status=status,
            step=final_step,
            val_loss=last.get("val_loss"),
            val_ppl=last.get("val_ppl"),
            tev_mean=last.get("tev_mean"),
            tev_std=last.get("tev_std"),
            checkpoint=self._last_ckpt,
        )


def _read_toml(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())
