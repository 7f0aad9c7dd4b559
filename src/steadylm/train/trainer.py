"""The training loop: data, model, AdamW, monitoring, evaluation, checkpoints, exact resume.

One optimizer step consumes `train.batch_size` sequences globally. Each rank takes its slice
and runs it in micro-batches of `train.micro_batch_size`; every micro-batch's summed token loss
is divided by the global token count of the step, so gradients do not depend on how the batch is
split across micro-batches or ranks.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from steadylm.config import Config, config_from_dict
from steadylm.data.prepare import PreparedData, prepare
from steadylm.data.reader import SequenceReader, eval_sequences
from steadylm.errors import CheckpointError, DataError, SteadyLMError
from steadylm.model.gpt import GPT
from steadylm.model.taps import BlockTaps
from steadylm.monitor.tev import tev_histogram
from steadylm.train import checkpoint as ckpt_io
from steadylm.train import faults, runfolder
from steadylm.train.distributed import DistContext, init_distributed, shutdown
from steadylm.train.metrics import MetricsLog, truncate_metrics
from steadylm.train.monitoring import TrainingMonitors, Verdict
from steadylm.train.optim import build_optimizer, lr_at
from steadylm.train.regularizers import penalty_sum
from steadylm.train.schedule import checkpoint_due
from steadylm.train.timing import StepTimer

# Keys of [train] that may change on --resume: they do not alter the optimisation trajectory
# up to the checkpoint (max_steps reshapes the schedule ahead, which is what extending a run means).
TEV_HISTOGRAM_BINS = 50

RESUMABLE_TRAIN_KEYS = {
    "max_steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "log_every",
    "compile", "device", "checkpoint_schedule",
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


def _precision(cfg: Config, device: torch.device) -> tuple[torch.dtype | None, str]:
    p = cfg.train.precision
    if p == "auto":
        p = "bf16" if device.type == "cuda" else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise SteadyLMError("train.precision: 'fp16' needs CUDA (it relies on a grad scaler); use 'bf16' or 'fp32' on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p], p


class Trainer:
    """Trains one run into `out`; `fit()` returns a RunResult."""

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
        self._started = False
        self.ctx: DistContext = init_distributed(cfg.train.device)
        self.timer = StepTimer(self.ctx.device)  # enabled by `steadylm bench` only
        self.autocast_dtype, self.precision = _precision(cfg, self.ctx.device)
        self._check_run_dir()

    # ----------------------------------------------------------------- set-up

    def _check_run_dir(self) -> None:
        cfg_path = self.run_dir / "config.toml"
        if self.resume:
            if not cfg_path.is_file():
                raise SteadyLMError(f"--resume: {self.run_dir} holds no steadylm run (no config.toml)")
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
            if key not in RESUMABLE_TRAIN_KEYS and getattr(saved.train, key) != getattr(self.cfg.train, key):
                raise SteadyLMError(
                    f"--resume: train.{key} differs from the run's config "
                    f"({getattr(saved.train, key)!r} vs {getattr(self.cfg.train, key)!r}); "
                    f"only {', '.join(sorted(RESUMABLE_TRAIN_KEYS))} may change"
                )

    def _resolve_vocab(self, data: PreparedData) -> None:
        n_tok = data.tokenizer.vocab_size
        if self.cfg.model.vocab_size == 0:
            self.cfg.model.vocab_size = n_tok
        elif self.cfg.model.vocab_size < n_tok:
            raise DataError(
                f"model.vocab_size={self.cfg.model.vocab_size} is smaller than the tokenizer's {n_tok} tokens "
                f"({data.tokenizer.name}); use 0 to take it from the tokenizer"
            )
        self.vocab_rows = n_tok  # rows past the tokenizer are padding: TEV leaves them out

    def _write_run_files(self) -> None:
        rd = self.run_dir
        rd.mkdir(parents=True, exist_ok=True)
        (rd / "config.toml").write_text(self.cfg.to_toml())
        provenance = runfolder.provenance(
            self.ctx.device, world_size=self.ctx.world_size, precision=self.precision, dataset=str(self.data.dir)
        )
        (rd / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")

    def _set_status(self, status: str, **extra: Any) -> None:
        if not self.ctx.is_main:
            return
        runfolder.write_status(self.run_dir, status, **extra)

    def _build(self) -> None:
        cfg = self.cfg
        self.data = prepare(cfg.data, progress=self.progress and self.ctx.is_main)
        self._resolve_vocab(self.data)
        T = cfg.model.block_size
        self.reader = SequenceReader(self.data.train, T, seed=cfg.train.seed)
        self.val_tokens = self.data.val
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
        self.grad_accum = per_rank // cfg.train.micro_batch_size

        torch.manual_seed(cfg.train.seed)  # the same init on every rank
        self.model = GPT(cfg.model).to(self.ctx.device)
        self.fsdp = self.ctx.enabled and cfg.train.parallel == "fsdp"
        self.forward_model: torch.nn.Module = self.model
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in self.model.transformer.h:
                fully_shard(block)
            fully_shard(self.model)  # embeddings, ln_f and the tied head
        elif self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.forward_model = DDP(self.model, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None)
        # Built after sharding: under FSDP2 the optimizer must hold the sharded parameters.
        self.optimizer = build_optimizer(self.model, cfg.train, self.ctx.device)
        if cfg.train.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.monitors = TrainingMonitors(self.model, cfg.monitor, self.vocab_rows, self.ctx, self.fsdp)
        # The linearity regulariser reads the residual stream between blocks; None leaves the
        # forward pass exactly as without it.
        self.taps = BlockTaps(self.model.transformer.h, detach=False) if cfg.train.linearity_reg > 0 else None
        # Dropout draws differ per rank; after the shared init, each rank gets its own stream.
        torch.manual_seed(cfg.train.seed + 1 + self.ctx.rank)

    def _restore(self) -> int:
        """Load the latest verified checkpoint; returns the step to continue from."""
        saved = config_from_dict(_read_toml(self.run_dir / "config.toml"))
        self._check_resume_compatible(saved)
        ckpt = ckpt_io.latest_checkpoint(self.run_dir, quiet=not self.ctx.is_main)
        if ckpt is None:  # killed before the first checkpoint: start over in the same folder
            if self.ctx.is_main:
                truncate_metrics(self.run_dir / "metrics.jsonl", -1)
            return 0
        step = self._load_checkpoint(ckpt)
        if self.ctx.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", step - 1)
        return step

    def _load_checkpoint(self, ckpt: Path) -> int:
        """Model, optimizer, data cursor, RNG and monitor state from `ckpt`; returns its step."""
        from safetensors.torch import load_file

        from steadylm.data.tokenizer import Tokenizer

        if Tokenizer.load(ckpt / "tokenizer.json").fingerprint() != self.data.tokenizer.fingerprint():
            raise CheckpointError(f"{ckpt}: its tokenizer does not match the data's ({self.data.tokenizer.name})")
        self._load_model_state(load_file(str(ckpt / "model.safetensors"), device=str(self.ctx.device)), ckpt)
        optim_state, trainer_state, rng = ckpt_io.load_train_state(
            ckpt, get_optimizer_state_dict(self.model, self.optimizer), rank=self.ctx.rank, world_size=self.ctx.world_size
        )
        set_optimizer_state_dict(self.model, self.optimizer, optim_state)
        self.reader.load_state_dict(trainer_state["reader"])
        monitor_state = ckpt_io.load_monitor_state(ckpt)
        if monitor_state is not None:
            self.monitors.load_state_dict(monitor_state)
        if rng is None:
            if self.ctx.is_main:
                print(
                    f"steadylm: {ckpt.name} was saved with world size {trainer_state['world_size']}, now "
                    f"{self.ctx.world_size}: weights, optimizer and data cursor resume exactly; dropout "
                    "random streams are re-seeded, so losses are not bit-identical to an uninterrupted run",
                    file=sys.stderr,
                )
            torch.manual_seed(self.cfg.train.seed + 1 + self.ctx.rank + int(trainer_state["step"]) * 7919)
        else:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and self.ctx.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.ctx.device)
        return int(trainer_state["step"])

    # ---------------------------------------------------------------- the loop

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.autocast_dtype)

    def _train_step(self, step: int) -> tuple[dict[str, Any], Verdict, bool]:
        """One optimizer step; returns its metrics row, the guards' verdict, and whether the
        update was skipped (a skipped step still advances step, tokens, schedule and data)."""
        cfg, model, mon, timed = self.cfg, self.model, self.monitors, self.timer.section
        lr = lr_at(step, cfg.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with timed("data"):
            x_all, y_all = self.reader.next_batch(cfg.train.batch_size, self.ctx.rank, self.ctx.world_size)
        per_rank, T = x_all.shape
        n_micro = self.grad_accum
        if n_micro == 1 and mon.gradvar_due(step) and per_rank % 2 == 0:
            # The gradient-variance reference needs K >= 2 micro-batches: split this step's batch
            # in two (the same gradient up to rounding).
            n_micro = 2
        mb = per_rank // n_micro
        # DDP averages gradients over ranks; scaling by world size turns that into a sum, so
        # the gradient is that of the summed token loss over the global batch / global tokens.
        scale = self.ctx.world_size / (cfg.train.batch_size * T)
        with timed("monitors"):
            # With that scale, each backward carries 1/n_micro of its micro-batch's mean-loss gradient.
            mon.begin_step(step, n_micro, n_micro if self.scaler is None else n_micro / self.scaler.get_scale())
        loss_sum = torch.zeros((), device=self.ctx.device)
        zloss_sum = torch.zeros((), device=self.ctx.device)
        reg_sum = torch.zeros((), device=self.ctx.device)
        for i in range(n_micro):
            with timed("data"):
                x = x_all[i * mb:(i + 1) * mb].to(self.ctx.device, non_blocking=True)
                y = y_all[i * mb:(i + 1) * mb].to(self.ctx.device, non_blocking=True)
            with timed("monitors"):
                mon.observe(x)
            last_micro = i == n_micro - 1
            sync = contextlib.nullcontext()
            if self.fsdp:
                self.model.set_requires_gradient_sync(last_micro)  # reduce-scatter once per step
            elif self.ctx.enabled and not last_micro:
                sync = self.forward_model.no_sync()
            with sync:
                with timed("forward"), self._autocast():
                    objective, log_z_sq, penalty = self._forward(x, y)
                with timed("backward"):
                    total = objective if penalty is None else objective + cfg.train.linearity_reg * penalty
                    if self.scaler is not None:
                        self.scaler.scale(total * scale).backward()
                    else:
                        (total * scale).backward()
            loss_sum += objective.detach() - cfg.train.z_loss * log_z_sq  # cross-entropy alone
            if penalty is not None:
                reg_sum += penalty.detach()
            zloss_sum += log_z_sq
        faults.crash_if_armed("mid-step", step)
        tokens_global = cfg.train.batch_size * T
        loss = self.ctx.all_reduce_sum(loss_sum) / tokens_global
        row: dict[str, Any] = {"step": step, "tokens": (step + 1) * tokens_global, "loss": loss, "lr": lr}
        with timed("monitors"):
            mon.after_backward(row, step)
        with timed("optimizer"):
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for p in model.parameters() if p.grad is not None]
            total_norm = mon.gradient_norm(row, params)  # clipping needs it; per-block norms come free
            # a DTensor under FSDP2; the logged and judged norm is the full one
            grad_norm = total_norm.full_tensor() if hasattr(total_norm, "full_tensor") else total_norm
        row["grad_norm"] = grad_norm  # before clipping
        if cfg.train.z_loss > 0:
            row["z_loss"] = cfg.train.z_loss * self.ctx.all_reduce_sum(zloss_sum) / tokens_global  # the term added
        if self.taps is not None:
            row["linearity_reg"] = cfg.train.linearity_reg * self.ctx.all_reduce_sum(reg_sum) / tokens_global  # the term added
        with timed("monitors"):
            # fp16 gradients overflow now and then by design; the grad scaler skips those steps itself.
            verdict = mon.judge(step, loss, grad_norm if self.scaler is None else loss)
            skip = verdict.non_finite or (verdict.spike and cfg.monitor.on_spike == "skip")
            mon.before_update(step)
        with timed("optimizer"):
            if not skip:
                if cfg.train.grad_clip > 0:  # judged first: clipping by a NaN norm would smear NaN over every gradient
                    torch.nn.utils.clip_grads_with_norm_(params, cfg.train.grad_clip, total_norm)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.model.after_optimizer_step()  # σReparam's power iteration; a no-op otherwise
            self.optimizer.zero_grad(set_to_none=True)
        with timed("monitors"):
            mon.after_update(row, step, updated=not skip)
            mon.activations(row, step, x)
        if skip:
            row["skipped"] = True
        return row, verdict, skip

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Summed objective and Σ log²Z of a micro-batch, and the linearity penalty summed over
        tokens (None when train.linearity_reg is 0, which leaves the forward pass untouched)."""
        z_loss = self.cfg.train.z_loss
        if self.taps is None:
            return *self.forward_model(x, targets=y, z_loss=z_loss), None
        with self.taps:
            objective, log_z_sq = self.forward_model(x, targets=y, z_loss=z_loss)
        penalty = penalty_sum(self.taps.states, self.cfg.train.linearity_reg_kind)
        self.taps.states = []  # the graph lives on in `penalty` until the backward, not here
        return objective, log_z_sq, penalty

    def _model_state(self) -> dict[str, torch.Tensor] | None:
        """Consolidated fp32 weights on rank 0 (a collective under FSDP2), None on other ranks."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if not self.ctx.is_main:
                return None
            full = {k: v.float().contiguous() for k, v in full.items()}
            full.pop("lm_head.weight", None)
            return full
        return ckpt_io.model_state_for_saving(self.model) if self.ctx.is_main else None

    def _load_model_state(self, sd: dict[str, torch.Tensor], ckpt: Path) -> None:
        sd = {**sd, "lm_head.weight": sd["transformer.wte.weight"]} if "transformer.wte.weight" in sd else sd
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.model, sd, options=StateDictOptions(full_state_dict=True))
            return
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{ckpt}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")

    @torch.no_grad()
    def evaluate(self) -> torch.Tensor:
        """Mean token loss on a fixed set of validation sequences (the same at every evaluation)."""
        cfg = self.cfg
        T = cfg.model.block_size
        n_seq = min((len(self.val_tokens) - 1) // T, cfg.train.eval_batches * cfg.train.micro_batch_size)
        batches = eval_sequences(
            self.val_tokens, T, n_seq, cfg.train.micro_batch_size, self.ctx.rank, self.ctx.world_size
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
        trainer_state = {
            "step": step_done,
            "world_size": self.ctx.world_size,
            "reader": self.reader.state_dict(),
            "tokens": step_done * self.cfg.train.batch_size * self.cfg.model.block_size,
        }
        path = ckpt_io.save_checkpoint(
            self.run_dir,
            step_done,
            self._model_state(),
            get_optimizer_state_dict(self.model, self.optimizer),
            trainer_state,
            self.cfg.to_toml(),
            self.data.dir / "tokenizer.json",
            monitor_state=self.monitors.state_dict(),
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            barrier=self.ctx.barrier,
        )
        if self.ctx.is_main:
            ckpt_io.prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
        return path

    def _react(self, step: int, row: dict[str, Any], verdict: Verdict, metrics: MetricsLog) -> int | None:
        """Record guard events and act on them; returns the step to go back to after a rollback."""
        mon_cfg = self.cfg.monitor
        if verdict.non_finite:
            metrics.record({"event": "non_finite", "step": step, "param": verdict.param, "loss": row["loss"],
                            "grad_norm": row["grad_norm"], "action": "skip"})
            if self.monitors.nonfinite_streak >= mon_cfg.nonfinite_patience:
                good = ckpt_io.latest_checkpoint(self.run_dir, quiet=True)
                self._stop_reason = (
                    f"non-finite loss or gradient for {self.monitors.nonfinite_streak} steps in a row (step {step}, "
                    f"first in {verdict.param}); the last good checkpoint is {good or 'none'}"
                )
            return None
        if not verdict.spike:
            return None
        action = mon_cfg.on_spike
        if action == "rollback":
            target = ckpt_io.latest_checkpoint(self.run_dir, quiet=True)
            if target is None or self.monitors.rollbacks >= mon_cfg.max_rollbacks:
                if target is not None:
                    self._stop_reason = f"loss spike at step {step} after {mon_cfg.max_rollbacks} rollbacks (monitor.max_rollbacks)"
                    action = "stop"
                else:
                    action = "log (no checkpoint to roll back to yet)"
        metrics.record({"event": "spike", "step": step, "loss": row["loss"], "grad_norm": row["grad_norm"], "action": action})
        if action != "rollback":
            return None
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
            truncate_metrics(self.run_dir / "metrics.jsonl", to_step - 1, keep_events=True)
        metrics.record({"event": "rollback", "step": step, "to_step": to_step, "skipped_sequences": skipped})
        self._flush(metrics, None)
        return to_step

    def _record_tev_histogram(self, step: int, metrics: MetricsLog) -> None:
        values = self.monitors.tev_values()
        if values is None:
            return
        counts, edges = tev_histogram(values, bins=TEV_HISTOGRAM_BINS)
        metrics.record({"event": "tev_histogram", "step": step, "counts": counts.tolist(), "edges": edges.tolist()})
        if self.tensorboard is not None:
            self.tensorboard.histogram("tev", values, step)

    def _flush(self, metrics: MetricsLog, bar) -> list[dict[str, Any]]:
        """One host sync: finish the pending rows, write them, update the sinks and progress bar."""
        now = time.perf_counter()
        tps = self._steps_since * self.cfg.train.batch_size * self.cfg.model.block_size / max(now - self._t_flush, 1e-9)
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
                return self._fit()
        except BaseException as e:
            if self._started:  # never mark a run this process did not get to train as failed
                self._set_status("failed", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            shutdown(self.ctx)

    def _fit(self) -> RunResult:
        cfg = self.cfg
        self._build()
        start = self._restore() if self.resume else 0
        if self.ctx.is_main:
            if not self.resume:
                self._write_run_files()
            self._set_status("running", step=start)
        self._started = True
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.ctx.is_main)
        self.tensorboard = None
        if cfg.monitor.tensorboard and self.ctx.is_main:
            from steadylm.monitor.sinks import TensorBoardSink

            self.tensorboard = TensorBoardSink(self.run_dir / "tensorboard")
        end = cfg.train.max_steps if self.stop_at is None else min(cfg.train.max_steps, self.stop_at)
        bar = None
        if self.progress and self.ctx.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.train.max_steps, initial=start, desc=self.run_dir.name, unit="step", dynamic_ncols=True)
        self._last: dict[str, Any] = {}
        self._t_flush, self._steps_since = time.perf_counter(), 0
        self._last_ckpt: Path | None = None
        self._stop_reason: str | None = None
        status = "running"
        self.model.train()
        step = start
        while step < end:
            row, verdict, skipped = self._train_step(step)
            metrics.record(row)
            self._steps_since += 1
            rollback_to = self._react(step, row, verdict, metrics)
            if self._stop_reason:
                self._flush(metrics, bar)
                status = "diverged"
                break
            if rollback_to is not None:
                step = rollback_to
                continue
            is_last = step + 1 == end
            if cfg.train.eval_every and ((step + 1) % cfg.train.eval_every == 0 or step + 1 == cfg.train.max_steps):
                row["val_loss"] = self.evaluate()
                self._record_tev_histogram(step, metrics)
            interrupted = self._stop_requested()
            if (step + 1) % cfg.train.log_every == 0 or is_last or interrupted:
                self._flush(metrics, bar)
            if checkpoint_due(step + 1, cfg.train) or is_last or interrupted:
                self._last_ckpt = self._save(step + 1)
            step += 1
            if interrupted:
                status = "stopped"
                break
        if bar is not None:
            bar.close()
        if status == "running":
            status = "finished" if end == cfg.train.max_steps else "stopped"
        if self._stop_reason and self.ctx.is_main:
            print(f"steadylm: {self._stop_reason}", file=sys.stderr)
        last_ckpt = self._last_ckpt
        last = self._last
        final_step = last.get("step", start - 1) + 1
        extra = {"reason": self._stop_reason} if self._stop_reason else {}
        self._set_status(status, step=final_step, checkpoint=str(last_ckpt) if last_ckpt else None, **extra)
        return RunResult(
            run_dir=self.run_dir,
            status=status,
            step=final_step,
            val_loss=last.get("val_loss"),
            val_ppl=last.get("val_ppl"),
            tev_mean=last.get("tev_mean"),
            tev_std=last.get("tev_std"),
            checkpoint=last_ckpt,
        )


def _read_toml(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())
