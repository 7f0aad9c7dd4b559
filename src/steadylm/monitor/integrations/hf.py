"""steadylm's monitors in a Hugging Face `Trainer`, logged through the Trainer's own loggers.

    from steadylm.monitor.integrations.hf import SteadyLMCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds)
    SteadyLMCallback(gradvar_every=50).attach(trainer)
    trainer.train()

Every logged step then carries `tev_mean tev_std tev_seen_mean tev_seen_std` (+ `tev_head_*` for
untied models), per-block `grad_norm/G param_norm/G update_ratio/G` (G = embed, h.0, h.1, ...),
and on the steps that are due `grad_var_embed grad_var/h.N grad_var_seconds` and
`rms/h.N attn_logit_max logz_mean logz_max`. The values are those of the last optimizer step
before the log, computed on the device; they are read on the host only when the Trainer logs.

`attach` puts the callback first, so that reporters the Trainer made from `report_to`
(TensorBoard, W&B, ...) see its keys; passing it in `callbacks=[...]` instead also works, but
then only `trainer.state.log_history` and the console get them.

Notes on the Trainer's loop: per-block gradient norms are read in `on_pre_optimizer_step`, i.e.
after gradient clipping (the Trainer's own `grad_norm` is the pre-clip total). Seen-row TEV
observes the input ids through a forward pre-hook on the input embedding in training mode.
The gradient variance needs `gradient_accumulation_steps >= 2` (GA) and takes each micro-batch's
gradient as GA times the gradient of its share of the step's loss, exact when the Trainer divides
each micro-batch's mean loss by GA. When it instead divides summed token losses by the step's
label count (`num_items_in_batch`, the default for causal LMs), micro-batches with equal label
counts still give exact variances up to that count's definition: the Trainer counts labels before
the causal shift (T per sequence, of which T-1 are scored), so the figure is ((T-1)/T)^2 times the
mean-loss definition (0.2% low at T = 1024). See steadylm.monitor.gradvar for the definition.
"""

from __future__ import annotations

import torch
from torch.utils.hooks import RemovableHandle
from transformers import TrainerCallback

from steadylm.monitor.activations import ActivationMonitor
from steadylm.monitor.cadence import due
from steadylm.monitor.gradvar import GradVarianceMonitor
from steadylm.monitor.layout import HasInputEmbeddings, unwrap
from steadylm.monitor.params import ParamStatsMonitor
from steadylm.monitor.tev import TEVMonitor


class SteadyLMCallback(TrainerCallback):
    """Log TEV and gradient statistics into the Trainer's logs.

    Every `*_every` counts optimizer steps (0 turns that monitor off); the step numbering is the
    Trainer's `global_step` before the step, so step 0 is always measured. `vocab_size` limits TEV
    to the real vocabulary (default: the embedding's rows). `act_probe` is how many sequences of
    the last batch the activation probe forward uses.
    """

    def __init__(
        self,
        tev_every: int = 1,
        stats_every: int = 1,
        gradvar_every: int = 0,
        act_every: int = 0,
        act_probe: int = 1,
        vocab_size: int | None = None,
    ):
        self.tev_every, self.stats_every = tev_every, stats_every
        self.gradvar_every, self.act_every, self.act_probe = gradvar_every, act_every, act_probe
        self.vocab_size = vocab_size
        self._pending: dict[str, torch.Tensor | float | int] = {}
        self._hook: RemovableHandle | None = None
        self._last_ids: torch.Tensor | None = None

    def attach(self, trainer) -> SteadyLMCallback:
        """Register with `trainer`, ahead of its reporting callbacks."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.gradvar_every and args.gradient_accumulation_steps < 2:
            raise ValueError(
                f"SteadyLMCallback(gradvar_every={self.gradvar_every}) needs gradient_accumulation_steps >= 2 "
                f"(got {args.gradient_accumulation_steps}); set it or use gradvar_every=0"
            )
        self.model = unwrap(model)
        assert isinstance(self.model, HasInputEmbeddings)  # a Hugging Face PreTrainedModel
        self.tev = TEVMonitor.for_model(self.model, self.vocab_size)
        self.stats = ParamStatsMonitor(self.model)
        self.gradvar = GradVarianceMonitor(self.model) if self.gradvar_every else None
        self.act = ActivationMonitor(self.model) if self.act_every else None
        self._hook = self.model.get_input_embeddings().register_forward_pre_hook(self._observe)

    def _observe(self, module, args):
        if module.training and args and isinstance(args[0], torch.Tensor):
            self.tev.observe_tokens(args[0])
            self._last_ids = args[0]

    def on_step_begin(self, args, state, control, **kwargs):
        if self.gradvar is not None and due(self.gradvar_every, state.global_step):
            self.gradvar.begin(grad_scale=args.gradient_accumulation_steps)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.gradvar is not None and self.gradvar.active:
            self._pending.update(self.gradvar.end())
        if due(self.stats_every, state.global_step):
            self._pending.update(self.stats.grad_norms())
            self.stats.snapshot()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if due(self.stats_every, state.global_step):
            self._pending.update(self.stats.update_ratios())

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step - 1  # the Trainer has already counted the step just taken
        if due(self.tev_every, step):
            self._pending.update(self.tev.compute())
        if self.act is not None and due(self.act_every, step) and self._last_ids is not None:
            self._pending.update(self.act.measure(self._last_ids[: self.act_probe]))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending or logs is None:
            return
        tensors = {k: v for k, v in self._pending.items() if isinstance(v, torch.Tensor)}
        values = dict(self._pending)
        if tensors:  # one transfer for all of them
            values.update(
                zip(
                    tensors,
                    torch.stack(
                        [t.detach().float().reshape(()) for t in tensors.values()]
                    ).tolist(),
                    strict=True,
                )
            )
        self._pending = {}
        logs.update(values)
        # Trainer.log appends a copy of `logs` to log_history just before calling on_log.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
