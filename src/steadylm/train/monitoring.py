"""The trainer's side of monitoring: which monitor runs when, and the per-step guards.

Everything is measured on the device. One boolean pair per step (non-finite? spike?) is read on
the host, because deciding to skip the optimizer step needs it; every other figure waits for the
`log_every` flush.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from steadylm.config import MonitorConfig
from steadylm.monitor.activations import ActivationMonitor
from steadylm.monitor.gradvar import GradVarianceMonitor
from steadylm.monitor.layout import HasInputEmbeddings
from steadylm.monitor.nonfinite import first_nonfinite_grad
from steadylm.monitor.params import ParamStatsMonitor
from steadylm.monitor.spikes import SpikeDetector
from steadylm.monitor.tev import TEVMonitor, frequency_groups, tev_per_row
from steadylm.train.distributed import DistContext, sharded_tev_summary


@dataclass
class Verdict:
    """What the guards decided for one step."""

    non_finite: bool
    spike: bool
    param: str | None = None  # the first parameter with a non-finite gradient


def _due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0


class TrainingMonitors:
    """All monitors of one run. Under FSDP2 the norms and TEV figures come from each rank's
    shards and one all-reduce (every rank makes the same calls), the activation probe runs its
    forward on every rank, the gradient-variance reference always runs as the trainer's probe
    (its figures from the reduced gradient shards, see `steadylm.monitor.gradvar`) and the TEV
    histogram gathers the embedding at evaluation steps."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: MonitorConfig,
        vocab_rows: int,
        ctx: DistContext,
        fsdp: bool,
        token_counts: torch.Tensor | None = None,
    ):
        self.cfg, self.ctx, self.fsdp, self.model = cfg, ctx, fsdp, model
        self.vocab_rows = vocab_rows
        groups = (
            frequency_groups(token_counts)
            if cfg.tev_freq_groups and token_counts is not None
            else None
        )
        # Under FSDP2 the monitor keeps the seen mask; the figures come from sharded row moments.
        self.tev = TEVMonitor.for_model(model, vocab_size=vocab_rows, row_groups=groups)
        self.stats = ParamStatsMonitor(model, sharded=fsdp)
        self.gradvar = GradVarianceMonitor(model, sharded=fsdp) if cfg.gradvar_every else None
        self.acts = None if not cfg.act_every else ActivationMonitor(model)
        self.spikes = SpikeDetector(window=cfg.spike_window, sigma=cfg.spike_sigma)
        self.nonfinite_streak = 0
        self.rollbacks = 0
        self._ratios_due = False

    # Per step, in the order the trainer calls them.

    def gradvar_due(self, step: int) -> bool:
        return self.gradvar is not None and _due(self.cfg.gradvar_every, step)

    def probe_gradvar(self, n_micro: int, step: int) -> bool:
        """Whether this step's reference needs the trainer's probe (extra backward passes outside
        the step) rather than hooks on the step's own micro-batches: with one micro-batch, and
        always under FSDP2, whose backward leaves only reduced gradient shards."""
        return self.gradvar_due(step) and (n_micro == 1 or self.fsdp)

    def begin_step(self, step: int, n_micro: int, grad_scale: float | torch.Tensor) -> None:
        """Before the step's first backward: the reference's hooks, if due (see probe_gradvar)."""
        if self.gradvar is not None and self.gradvar_due(step) and n_micro >= 2 and not self.fsdp:
            # the hooks scale each backward to the gradient of its micro-batch's mean loss
            self.gradvar.begin(grad_scale=grad_scale)

    def begin_probe(self, grad_scale: float | torch.Tensor) -> None:
        """Before the probe's backward passes; `record_probe()` after each of them."""
        assert self.gradvar is not None  # probe_gradvar() was true
        self.gradvar.begin(grad_scale=grad_scale, hooks=False)

    def record_probe(self) -> None:
        assert self.gradvar is not None  # begin_probe() ran
        self.gradvar.record()

    def observe(self, x: torch.Tensor) -> None:
        self.tev.observe_tokens(x)

    def after_backward(self, row: dict[str, Any]) -> None:
        if self.gradvar is not None and self.gradvar.active:
            row.update(self.gradvar.end())

    def gradient_norm(self, row: dict[str, Any], params: list[torch.nn.Parameter]) -> torch.Tensor:
        """The total gradient norm; per-block norms (`grad_norm/h.N`) come free with it every step."""
        if self.fsdp:
            # Clipping the sharded gradients takes the total as a DTensor; the groups' norms come
            # from each rank's shards.
            row.update(self.stats.grad_norms())
            return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        groups, total = self.stats.grad_norms_with_total(params)
        row.update(groups)
        return total

    def judge(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> Verdict:
        """The step's one host sync: non-finite loss or gradient, and the spike test. With
        `grad_norm` None (fp16, where the grad scaler handles overflowing gradients) only the
        loss is judged."""
        spike = self.spikes.update(loss, grad_norm)
        finite = (
            torch.isfinite(loss)
            if grad_norm is None
            else torch.isfinite(loss) & torch.isfinite(grad_norm)
        )
        nf, sp = torch.stack([~finite, spike]).tolist()
        verdict = Verdict(non_finite=bool(nf), spike=bool(sp) and not nf)
        if verdict.non_finite:
            verdict.param = first_nonfinite_grad(self.model) or "(the loss itself)"
            self.nonfinite_streak += 1
        else:
            self.nonfinite_streak = 0
        return verdict

    def before_update(self, step: int) -> None:
        # Parameter norms and update ratios cost a copy of the weights: every stats_every steps.
        self._ratios_due = _due(self.cfg.stats_every, step)
        if self._ratios_due:
            self.stats.snapshot()

    def after_update(self, row: dict[str, Any], step: int, updated: bool) -> None:
        if self._ratios_due and updated:
            row.update(self.stats.update_ratios())
        self._ratios_due = False
        if _due(self.cfg.tev_every, step):
            row.update(self.tev_figures())

    def activations(self, row: dict[str, Any], step: int, x: torch.Tensor) -> None:
        """One extra forward of a single sequence in eval mode: no RNG drawn, no gradient."""
        if self.acts is not None and _due(self.cfg.act_every, step):
            row.update(self.acts.measure(x[:1]))

    def tev_figures(self) -> dict[str, torch.Tensor]:
        if self.ctx.enabled:
            self.tev.all_reduce_seen()  # each rank saw its own tokens
        if self.fsdp:
            weight = self._embedding_weight()
            return sharded_tev_summary(weight, self.vocab_rows, self.tev.seen)
        return self.tev.compute()

    def tev_values(self) -> torch.Tensor:
        """TEV_i over the real rows, for histograms at evaluation steps (a collective under FSDP2)."""
        if not self.fsdp:
            return self.tev.values()
        weight = self._embedding_weight()
        if hasattr(weight, "full_tensor"):  # sharded by FSDP2 (not right after a forward pass)
            weight = weight.full_tensor()  # gathered on every rank, at evaluation steps only
        return tev_per_row(weight, self.vocab_rows)

    def _embedding_weight(self) -> torch.Tensor:
        """The input embedding's (V, d) weight (a DTensor when FSDP2 has sharded it)."""
        assert isinstance(self.model, HasInputEmbeddings)  # steadylm's GPT
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return weight

    # Checkpointed state.

    def state_dict(self) -> dict[str, Any]:
        if self.ctx.enabled:
            self.tev.all_reduce_seen()
        return {
            "spikes": self.spikes.state_dict(),
            "rollbacks": self.rollbacks,
            "tev": self.tev.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spikes.load_state_dict(state["spikes"])
        self.rollbacks = int(state.get("rollbacks", 0))
        if "tev" in state:  # FSDP2 checkpoints written before the seen mask was kept have none
            self.tev.load_state_dict(state["tev"])
