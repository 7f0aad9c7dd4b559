"""The fine-tuning job: a pretrained base, a labelled task and a method, into a run folder.

    RUN/config.toml        the resolved [finetune] section
    RUN/provenance.json    versions, device, threads, task sizes
    RUN/tokenizer.json     the base's tokenizer
    RUN/metrics.jsonl      one line per step: loss, accuracy (of the batch), lr, step_time;
                           val_loss, val_accuracy every eval_every steps; kept_energy (sparsegrad)
    RUN/checkpoints/       step_NNNNNN/ as written by `steadylm.train.checkpoint` (weights, the
                           optimizers' state, RNG, data cursor, manifest with sha256s)
    RUN/classifier/        the fine-tuned classifier with LoRA merged and SparseGrad folded back:
                           a Hugging Face folder (huggingface bases) or a steadylm classifier
                           folder (GPT bases); `load_classifier` reads either
    RUN/eval.json          test accuracy, macro-F1 and the costs (see docs/finetune.md)
    RUN/status.json        running | finished | stopped | failed

Everything that can be wrong with the input (task, base, method options) is checked before the
folder is created, so a bad command leaves nothing behind. The data order of every epoch is a
permutation drawn from (seed, epoch), so the step number alone places a resumed run in its data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from steadylm import rundir
from steadylm.errors import CheckpointError, SteadyLMError
from steadylm.finetune import methods
from steadylm.finetune.config import (
    RESUMABLE_KEYS,
    FinetuneConfig,
    finetune_config_from_dict,
)
from steadylm.finetune.export import export_classifier
from steadylm.finetune.models import Classifier, LoadedBase, build_classifier, mlp_linears, pad
from steadylm.finetune.sparsegrad import (
    SparseGradLinear,
    load_sparsegrad_state,
    sparsegrad_state,
)
from steadylm.provenance import provenance
from steadylm.train.checkpoint import Component, load_checkpoint, prune_checkpoints, save_checkpoint
from steadylm.train.distributed import resolve_device
from steadylm.train.metrics import MetricsLog, truncate_metrics
from steadylm.train.state import OptimizerState, RNGState


@dataclasses.dataclass
class Encoded:
    """One split as token lists (truncated to max_length) and labels."""

    ids: list[list[int]]
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.ids)

    def batch(
        self, index: torch.Tensor | Sequence[int], pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = [self.ids[i] for i in index]
        ids, mask = pad(rows, pad_id)
        return ids, mask, self.labels[torch.as_tensor(list(index), dtype=torch.long)]


def load_task_by_name(name: str, progress: bool):
    """The task through `steadylm.tasks` (names, .jsonl/.csv files; its errors are one line)."""
    from steadylm.tasks import load_task

    return load_task(name, progress=progress)


class FinetuneJob:
    """Fine-tunes `cfg.base` on `task` with `cfg.method` into `out`; `run()` returns eval.json's dict.

    `task` is anything shaped like `steadylm.tasks.Task` (name, labels, train, validation, test
    of examples with text and label); None loads `cfg.task` by name."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        out: str | Path,
        *,
        task=None,
        resume: bool = False,
        progress: bool = True,
        stop_at: int | None = None,
    ):
        self.cfg, self.run_dir, self.resume, self.progress, self.stop_at = (
            cfg,
            Path(out),
            resume,
            progress,
            stop_at,
        )
        self._check_run_dir()
        self.device = resolve_device(cfg.device, option="finetune.device")
        self.task = task if task is not None else load_task_by_name(cfg.task, progress)
        self._check_task()

    # ----------------------------------------------------------------- set-up

    def _check_run_dir(self) -> None:
        cfg_path = self.run_dir / "config.toml"
        if self.resume:
            if not cfg_path.is_file():
                raise SteadyLMError(
                    f"--resume: {self.run_dir} holds no steadylm run (no config.toml)"
                )
            saved = finetune_config_from_dict(tomllib.loads(cfg_path.read_text()))
            for key in dataclasses.asdict(saved):
                if key not in RESUMABLE_KEYS and getattr(saved, key) != getattr(self.cfg, key):
                    raise SteadyLMError(
                        f"--resume: finetune.{key} differs from the run's config ({getattr(saved, key)!r} vs "
                        f"{getattr(self.cfg, key)!r}); only {', '.join(sorted(RESUMABLE_KEYS))} may change"
                    )
        elif self.run_dir.exists() and any(self.run_dir.iterdir()):
            what = "a steadylm run" if cfg_path.is_file() else "other files"
            raise SteadyLMError(
                f"--out: {self.run_dir} already holds {what}; pass --resume to continue it "
                "or choose another folder"
            )

    def _check_task(self) -> None:
        t = self.task
        if len(t.labels) < 2:
            raise SteadyLMError(
                f"task {t.name}: {len(t.labels)} label(s); classification needs at least 2"
            )
        for split in ("train", "test"):
            if not getattr(t, split):
                raise SteadyLMError(f"task {t.name}: the {split} split is empty")

    def _build(self) -> None:
        """Base, method structure and optimizers; every input check happens here, before the folder exists."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the new head (and LoRA's A) are drawn from the seed
        self.base: LoadedBase = build_classifier(cfg.base, tuple(self.task.labels), cfg.pooling)
        self.max_length = min(cfg.max_length, self.base.max_length)
        model = self.base.model
        self.mlps = mlp_linears(model)
        self.budget = (
            methods.resolve_budget(cfg, self.mlps, cfg.base) if cfg.method != "full" else None
        )
        if cfg.method == "lora":
            methods.require_peft()
        self.train_data = self._encode(self.task.train)
        self.val_data = self._encode(self.task.validation) if self.task.validation else None
        self.test_data = self._encode(self.task.test)
        self.pad_id = self.base.encoder.pad_id
        self.steps_per_epoch = math.ceil(len(self.train_data) / cfg.batch_size)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.model: nn.Module = model.to(self.device)  # a peft model once LoRA is applied
        self.info: dict[str, Any] = {}

    def _encode(self, examples) -> Encoded:
        ids = self.base.encoder.ids([e.text for e in examples], self.max_length)
        return Encoded(ids, torch.tensor([e.label for e in examples], dtype=torch.long))

    def _apply_method(self, fresh: bool) -> None:
        cfg, model = self.cfg, self.model
        mlp_ids = {id(m.module.weight) for m in self.mlps}
        budget = self.budget  # resolved in _build for every method but "full"
        if cfg.method == "lora":
            assert budget is not None
            model = methods.apply_lora(model, self.mlps, budget, cfg)
        elif cfg.method == "sparsegrad":
            bases = None
            if fresh:
                bases, t_grad, t_hosvd = methods.collect_bases(
                    model, self.mlps, self._warmup_batches(), lambda b: self._loss(b)[0]
                )
                self.info.update(hosvd_seconds=t_hosvd, warmup_grad_seconds=t_grad)
            assert budget is not None
            methods.apply_sparsegrad(model, self.mlps, budget, bases)
        methods.set_trainable(model, cfg, mlp_ids)
        self.model = model.to(self.device)
        self.optimizers = methods.build_optimizers(self.model, cfg)

    def _warmup_batches(self):
        """The first sparsegrad_warmup_steps batches of epoch 0's order (the gradients of the
        starting weights; no update is made, so every method gets the same training steps)."""
        n = min(self.cfg.sparsegrad_warmup_steps, self.steps_per_epoch)
        return (self._batch(step) for step in range(n))

    def _batch(self, step: int):
        """Batch of optimizer step `step`: epoch = step // steps_per_epoch, in the epoch's permutation."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_data), generator=g)
        bs = self.cfg.batch_size
        return self.train_data.batch(order[pos * bs : (pos + 1) * bs].tolist(), self.pad_id)

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, y = (t.to(self.device) for t in batch)
        logits = self.model(ids, mask)  # (B, C)
        return F.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean()

    def _lr_factor(self, step: int) -> float:
        """Linear warmup over warmup_ratio of the steps, then linear decay to 0."""
        warm = math.ceil(self.cfg.warmup_ratio * self.total_steps)
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warm))

    # ------------------------------------------------------------ checkpoints

    def _model_state(self) -> dict[str, torch.Tensor]:
        """fp32 CPU copies of the weights, each shared tensor once, plus SparseGrad's bases once per type."""
        seen: set[int] = set()
        sd: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            if v.data_ptr() in seen:  # tied weights: restored through the first name
                continue
            seen.add(v.data_ptr())
            sd[k] = v.detach().to("cpu", torch.float32).contiguous()
        sd.update(
            {k: v.detach().cpu().contiguous() for k, v in sparsegrad_state(self.model).items()}
        )
        return sd

    def _components(self, progress: _Progress) -> list[Component]:
        """What a fine-tuning checkpoint holds, in save/restore order: the weights (with SparseGrad's
        bases), the optimizers' state, the step and timing info, and the random streams."""
        return [
            Component("model", "model.safetensors", _Weights(self), "safetensors"),
            Component(
                "optimizer", "train_state/optim", OptimizerState(self.model, self.optimizers), "dcp"
            ),
            Component("progress", "train_state/trainer.json", progress, "json"),
            Component(
                "rng",
                "train_state/rng_rank{rank}.pt",
                RNGState(self.device),
                "per_rank",
                required=False,
            ),
        ]

    def _save(self, step_done: int) -> Path:
        files: dict[str, str | Path] = {
            rundir.CONFIG: self.cfg.to_toml(),
            "tokenizer.json": self.run_dir / "tokenizer.json",
        }
        path = save_checkpoint(
            self.run_dir, step_done, self._components(_Progress(self, step_done)), files
        )
        prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
        return path

    def _restore(self) -> int:
        ckpt = rundir.latest_checkpoint(self.run_dir)
        if ckpt is None:  # stopped before the first checkpoint: start over in the same folder
            truncate_metrics(self.run_dir / rundir.METRICS, -1)
            self._apply_method(fresh=True)
            return 0
        self._apply_method(fresh=False)
        progress = _Progress(self, 0)
        load_checkpoint(ckpt, self._components(progress))
        truncate_metrics(self.run_dir / rundir.METRICS, progress.step - 1)
        return progress.step

    def _write_run_files(self) -> None:
        rd = self.run_dir
        rd.mkdir(parents=True, exist_ok=True)
        (rd / "config.toml").write_text(self.cfg.to_toml())
        self.base.encoder.tokenizer.save(str(rd / "tokenizer.json"))
        sizes = {s: len(getattr(self.task, s)) for s in ("train", "validation", "test")}
        prov = provenance(
            self.device,
            task=self.task.name,
            labels=list(self.task.labels),
            task_sizes=sizes,
            base_architecture=self.base.architecture,
        )
        (rd / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n")

    # ---------------------------------------------------------------- the loop

    @torch.no_grad()
    def evaluate(self, data: Encoded) -> dict[str, float]:
        """Loss, accuracy and macro-F1 (over the labels that occur in truth or prediction)."""
        was_training = self.model.training
        self.model.eval()
        preds, loss_sum = [], 0.0
        bs = max(self.cfg.batch_size, 64)
        for i in range(0, len(data), bs):
            ids, mask, y = (
                t.to(self.device) for t in data.batch(range(i, min(i + bs, len(data))), self.pad_id)
            )
            logits = self.model(ids, mask)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            preds.append(logits.argmax(-1).cpu())
        self.model.train(was_training)
        pred, truth = torch.cat(preds), data.labels
        return {
            "loss": loss_sum / len(data),
            "accuracy": float((pred == truth).float().mean()),
            "macro_f1": macro_f1(pred, truth),
        }

    def run(self) -> dict[str, Any]:
        self._build()  # may raise an input error: nothing has been written yet
        if not self.resume:
            self._write_run_files()
        try:
            rundir.write_status(self.run_dir, "running")
            if self.resume:
                start = self._restore()
            else:
                self._apply_method(fresh=True)
                start = 0
            return self._train(start)
        except KeyboardInterrupt:
            rundir.write_status(self.run_dir, "stopped", reason="interrupted")
            raise
        except BaseException as e:
            rundir.write_status(self.run_dir, "failed", error=f"{type(e).__name__}: {e}")
            raise

    def _train(self, start: int) -> dict[str, Any]:
        cfg = self.cfg
        end = self.total_steps if self.stop_at is None else min(self.total_steps, self.stop_at)
        metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        bar = self._progress_bar(start)
        sg_layers = [m for m in self.model.modules() if isinstance(m, SparseGradLinear)]
        # Wall and process-CPU seconds of the training steps alone; CPU time is the fairer speed on a
        # shared machine, where wall time depends on what else runs.
        train_seconds, steps_timed = (
            float(self.info.get("train_seconds", 0.0)),
            int(self.info.get("steps_timed", 0)),
        )
        cpu_seconds = float(self.info.get("cpu_seconds", 0.0))
        self.model.train()
        ckpt = None
        for step in range(start, end):
            t0, c0 = time.perf_counter(), time.process_time()
            loss, acc, factor = self._step(step)
            dt = time.perf_counter() - t0
            train_seconds, steps_timed = train_seconds + dt, steps_timed + 1
            cpu_seconds += time.process_time() - c0
            row: dict[str, Any] = {
                "step": step,
                "epoch": step // self.steps_per_epoch,
                "loss": loss.detach(),
                "accuracy": acc,
                "lr": cfg.lr * factor,
                "step_time": dt,
            }
            if sg_layers:
                row["kept_energy"] = _mean_kept_energy(sg_layers)
            done = step + 1
            if self.val_data is not None and (
                (cfg.eval_every and done % cfg.eval_every == 0) or done == self.total_steps
            ):
                val = self.evaluate(self.val_data)
                row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            metrics.record(row)
            if done % cfg.log_every == 0 or done == end:
                rows = metrics.flush()
                if bar is not None:
                    bar.update(done - bar.n)
                    bar.set_postfix_str(
                        f"loss {rows[-1]['loss']:.4f} | acc {rows[-1]['accuracy']:.3f}"
                    )
            self.info.update(
                train_seconds=train_seconds, steps_timed=steps_timed, cpu_seconds=cpu_seconds
            )
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == end:
                ckpt = self._save(done)
        if bar is not None:
            bar.close()
        if end < self.total_steps:
            rundir.write_status(
                self.run_dir, "stopped", step=end, checkpoint=str(ckpt) if ckpt else None
            )
            return {}
        return self._finish(ckpt)

    def _progress_bar(self, start: int):
        """A progress bar over all steps starting at `start`, or None without --progress."""
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.total_steps,
            initial=start,
            desc=self.run_dir.name,
            unit="step",
            dynamic_ncols=True,
        )

    def _step(self, step: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimisation step: the scheduled learning rate on every parameter group, forward,
        backward, every optimizer's step; returns the loss, the accuracy and the lr factor."""
        factor = self._lr_factor(step)
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
        loss, acc = self._loss(self._batch(step))
        loss.backward()
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss, acc, factor

    def _finish(self, ckpt: Path | None) -> dict[str, Any]:
        cfg = self.cfg
        test = self.evaluate(self.test_data)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        result: dict[str, Any] = {
            "task": self.task.name,
            "base": cfg.base,
            "method": cfg.method,
            "seed": cfg.seed,
            "accuracy": test["accuracy"],
            "macro_f1": test["macro_f1"],
            "n_test": len(self.test_data),
            "trainable_params": trainable,
            "peak_mem_mb": peak_memory_mb(self.device),
            "steps_per_s": _rate(self.info["steps_timed"], self.info["train_seconds"]),
            "steps_per_cpu_s": _rate(self.info["steps_timed"], self.info["cpu_seconds"]),
            "threads": torch.get_num_threads(),
            "steps": self.total_steps,
            "test_loss": test["loss"],
            "labels": list(self.task.labels),
        }
        if self.budget is not None:
            n_mlp = len(self.mlps)
            if cfg.method == "sparsegrad":
                result.update(
                    k=self.budget.k_value,
                    hosvd_seconds=self.info.get("hosvd_seconds"),
                    warmup_grad_seconds=self.info.get("warmup_grad_seconds"),
                    mlp_budget=sum(self.budget.k[m.layer_type] for m in self.mlps),
                )
            else:
                result.update(
                    lora_rank=self.budget.lora_rank,
                    mlp_budget=sum(
                        self.budget.lora_rank * sum(self.budget.shapes[m.layer_type])
                        for m in self.mlps
                    ),
                )
            result["mlp_matrices"] = n_mlp
        folded = methods.fold(self.model)
        assert isinstance(folded, Classifier)  # LoRA's merge_and_unload returns the wrapped model
        export_classifier(folded, self.base, self.task.labels, cfg, self.run_dir / "classifier")
        from steadylm.fsutil import atomic_write

        with atomic_write(self.run_dir / "eval.json") as f:
            f.write((json.dumps(result, indent=1) + "\n").encode())
        rundir.write_status(
            self.run_dir, "finished", step=self.total_steps, checkpoint=str(ckpt) if ckpt else None
        )
        return result


def _rate(n: int, seconds: float) -> float | None:
    return n / seconds if seconds > 0 else None


def _init_sparse_adam(opt: torch.optim.SparseAdam) -> None:
    """Give SparseAdam empty state before loading a checkpoint into it: torch.distributed.checkpoint
    would otherwise initialise it by a step on dense zero gradients, which SparseAdam rejects."""
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p] = {
                "step": 0,
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }


def macro_f1(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean F1 over the classes that occur in the truth or the predictions."""
    scores = []
    for c in torch.unique(torch.cat([pred, truth])).tolist():
        tp = int(((pred == c) & (truth == c)).sum())
        fp = int(((pred == c) & (truth != c)).sum())
        fn = int(((pred != c) & (truth == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on a GPU; on the CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class _Weights:
    """The classifier's weights (fp32, each shared tensor once) and SparseGrad's bases, as one
    checkpoint component."""

    def __init__(self, job: FinetuneJob):
        self.job = job

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.job._model_state()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        model = self.job.model
        bases = {k: sd.pop(k) for k in [k for k in sd if k.startswith("sparsegrad.")]}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        state = model.state_dict()
        stored = {state[n].data_ptr() for n in sd if n in state}
        tied = {k for k, v in state.items() if k not in sd and v.data_ptr() in stored}
        if set(missing) - tied or unexpected:
            raise CheckpointError(
                f"weights do not match the model (missing {sorted(set(missing) - tied)[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        load_sparsegrad_state(model, bases)
        for opt in self.job.optimizers:  # before the optimizer component restores its moments
            if isinstance(opt, torch.optim.SparseAdam):
                _init_sparse_adam(opt)


class _Progress:
    """Optimizer steps done and the timing info eval.json reports (trainer.json)."""

    def __init__(self, job: FinetuneJob, step: int):
        self.job, self.step = job, step

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "world_size": 1, "info": self.job.info}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.job.info.update(state.get("info", {}))


def _mean_kept_energy(sg_layers: list[SparseGradLinear]) -> torch.Tensor:
    """The mean over sparse-gradient layers of the gradient energy their last backward kept."""
    kept: list[torch.Tensor] = []
    for m in sg_layers:
        assert m.kept_energy is not None  # set by the backward just done
        kept.append(m.kept_energy)
    return torch.stack(kept).mean()
