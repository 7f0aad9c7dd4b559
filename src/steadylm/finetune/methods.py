"""The three fine-tuning methods, resolved by name in one place (`prepare_method`).

- "full": every parameter is trained with AdamW.
- "lora": peft's LoRA on the MLP linears of every block, rank r matched to SparseGrad's budget
  (r·(d_in + d_out) ≈ k per matrix) unless `finetune.lora_rank` says otherwise.
- "sparsegrad": the MLP linears become `SparseGradLinear` in the HOSVD basis of their gradients
  on `sparsegrad_warmup_steps` batches, stepped by SparseAdam on the top-k entries per step.
Under "lora" and "sparsegrad" the other parameters are trained with AdamW (`finetune.others =
"train"`, the paper's setting) or frozen (`"freeze"`); the classification head always trains.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from steadylm.errors import SteadyLMError
from steadylm.finetune.config import FinetuneConfig
from steadylm.finetune.models import MLPLinear, mlp_linears
from steadylm.finetune.sparsegrad import HOSVD, SparseGradLinear

_HEAD = re.compile(r"(?:^|\.)(classifier|score)\.")


@dataclass
class Budget:
    """What each MLP matrix may learn per step: SparseGrad's k per layer type and LoRA's rank."""

    k: dict[str, int]  # layer type -> kept entries per matrix
    shapes: dict[str, tuple[int, int]]  # layer type -> (out, in)
    lora_rank: int

    @property
    def k_value(self) -> int:
        """One k for reports: the same for every type unless the shapes differ (then the largest)."""
        return max(self.k.values())


@dataclass
class MethodInfo:
    """What a method reports in eval.json besides the common figures."""

    extra: dict = field(default_factory=dict)


def resolve_budget(cfg: FinetuneConfig, mlps: list[MLPLinear], base: str) -> Budget:
    """k and the LoRA rank for these MLP layers; a k larger than a matrix is an input error."""
    if not mlps:
        raise SteadyLMError(
            f"{base}: no MLP linear layers found (looked for intermediate/output.dense, mlp.gate/up/down_proj, "
            f"mlp.c_fc/c_proj, mlp.fc1/fc2 in numbered blocks); use --method full"
        )
    shapes: dict[str, tuple[int, int]] = {}
    for m in mlps:
        if not isinstance(m.module, nn.Linear):
            raise SteadyLMError(
                f"{m.name} is a {type(m.module).__name__}, not an nn.Linear: LoRA and SparseGrad here need "
                "nn.Linear MLP layers (a GPT-2 Hugging Face folder uses Conv1D); use --method full"
            )
        out_f, in_f = m.module.weight.shape
        shapes.setdefault(m.layer_type, (out_f, in_f))
    k: dict[str, int] = {}
    for t, (o, i) in shapes.items():
        k[t] = cfg.sparsegrad_k or max(1, round(0.01 * o * i))
        if k[t] > o * i:
            raise SteadyLMError(
                f"finetune.sparsegrad_k={cfg.sparsegrad_k} exceeds the {o}x{i} matrix of {t} "
                f"({o * i} entries); choose 1..{o * i} or 0 for 1%"
            )
    matched = [k[t] / (o + i) for t, (o, i) in shapes.items()]
    rank = cfg.lora_rank or max(1, round(sum(matched) / len(matched)))
    if rank > min(min(s) for s in shapes.values()):
        raise SteadyLMError(
            f"finetune.lora_rank={rank} exceeds the smaller side of an MLP matrix "
            f"({min(min(s) for s in shapes.values())})"
        )
    return Budget(k, shapes, rank)


def is_head(name: str) -> bool:
    return bool(_HEAD.search(name))


def set_trainable(model: nn.Module, cfg: FinetuneConfig, mlp_weight_ids: set[int]) -> None:
    """requires_grad per the method: everything (full); else the method's own parameters, the
    head, and (others = "train") every parameter but the MLP weight matrices."""
    sparse = {id(p) for p in sparse_params(model)}  # SparseGrad's W̃, trained by SparseAdam
    for name, p in model.named_parameters():
        if cfg.method == "full" or "lora_" in name or id(p) in sparse or is_head(name):
            p.requires_grad_(True)
        else:
            p.requires_grad_(cfg.others == "train" and id(p) not in mlp_weight_ids)


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise SteadyLMError("--method lora needs peft: pip install peft==0.21.2") from None


def apply_lora(
    model: nn.Module, mlps: list[MLPLinear], budget: Budget, cfg: FinetuneConfig
) -> nn.Module:
    """Wrap the MLP linears with LoRA adapters (peft); returns the peft model."""
    from peft import LoraConfig, get_peft_model

    alpha = cfg.lora_alpha or 2.0 * budget.lora_rank
    config = LoraConfig(
        r=budget.lora_rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; alpha / r takes floats
        lora_dropout=0.0,
        bias="none",
        target_modules=[m.name for m in mlps],
    )
    return get_peft_model(model, config)


def collect_bases(
    model: nn.Module,
    mlps: list[MLPLinear],
    batches: Iterable,
    loss_of: Callable[[object], torch.Tensor],
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, float]:
    """HOSVD bases per layer type from the MLP weight gradients on `batches` (no update is made).

    Only the MLP weights need gradients here. Returns (bases, seconds of forward/backward,
    seconds of HOSVD)."""
    saved = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for m in mlps:
        m.linear.weight.requires_grad_(True)
    acc = {t: HOSVD() for t in {m.layer_type for m in mlps}}
    t_grad = t_hosvd = 0.0
    for batch in batches:
        t0 = time.perf_counter()
        loss_of(batch).backward()
        t1 = time.perf_counter()
        for m in mlps:
            grad = m.linear.weight.grad
            assert grad is not None  # the loss depends on every MLP weight
            acc[m.layer_type].add(grad)
            m.linear.weight.grad = None
        t_grad += t1 - t0
        t_hosvd += time.perf_counter() - t1
    t0 = time.perf_counter()
    bases = {t: h.bases(mlps[0].linear.weight.dtype) for t, h in acc.items()}
    t_hosvd += time.perf_counter() - t0
    for p in model.parameters():
        p.requires_grad_(saved[id(p)])
    return bases, t_grad, t_hosvd


def apply_sparsegrad(
    model: nn.Module,
    mlps: list[MLPLinear],
    budget: Budget,
    bases: dict[str, tuple[torch.Tensor, torch.Tensor]] | None,
) -> None:
    """Replace the MLP linears in place by SparseGradLinear. Without bases (a resume, whose
    bases come from the checkpoint), identity placeholders of the right shape are used."""
    shared: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for m in mlps:
        w = m.linear.weight
        if m.layer_type not in shared:
            o, i = w.shape
            shared[m.layer_type] = (
                bases[m.layer_type]
                if bases
                else (torch.eye(o, dtype=w.dtype), torch.eye(i, dtype=w.dtype))
            )
        u_out, u_in = (u.to(w.device) for u in shared[m.layer_type])
        layer = SparseGradLinear(m.linear, u_out, u_in, budget.k[m.layer_type], m.layer_type)
        parent_name, _, child = m.name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)


def sparse_params(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, SparseGradLinear)]


def build_optimizers(model: nn.Module, cfg: FinetuneConfig) -> list[torch.optim.Optimizer]:
    """AdamW for dense parameters (decay on matrices only), plus, for the method's own
    parameters, AdamW at peft_lr (LoRA factors) or SparseAdam at peft_lr (SparseGrad's W̃)."""
    sparse = {id(p) for p in sparse_params(model)}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    lora: list[nn.Parameter] = []
    sg: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in sparse:
            sg.append(p)
        elif "lora_" in name:
            lora.append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr, "base_lr": cfg.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr, "base_lr": cfg.lr},
    ]
    if lora:
        groups.append(
            {"params": lora, "weight_decay": 0.0, "lr": cfg.peft_lr, "base_lr": cfg.peft_lr}
        )
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW([g for g in groups if g["params"]])
    ]
    if sg:
        opt = torch.optim.SparseAdam(sg, lr=cfg.peft_lr)
        for g in opt.param_groups:
            g["base_lr"] = cfg.peft_lr
        optimizers.append(opt)
    return optimizers


def fold(model: nn.Module) -> nn.Module:
    """The plain model: LoRA merged into its base weights, SparseGradLinear back to nn.Linear."""
    merge_and_unload = getattr(model, "merge_and_unload", None)  # a peft model's
    if merge_and_unload is not None:
        model = merge_and_unload()
    for name, m in list(model.named_modules()):
        if isinstance(m, SparseGradLinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, m.to_linear())
    return model


def mlp_weight_ids(model: nn.Module) -> set[int]:
    return {id(m.module.weight) for m in mlp_linears(model)}
