"""AdamW with decay on matrices only, and the warmup-then-cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from steadylm.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay every parameter with two or more dimensions (linear weights and embeddings, as in
    GPT-2 and nanoGPT); never biases, norm gains or scalars such as σReparam's γ."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, p in model.named_parameters():  # the tied head appears once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    # The fused kernel exists for CUDA and CPU; it is numerically deterministic on CPU.
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=device.type in ("cuda", "cpu"),
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup from lr/warmup to lr over `warmup_steps`, then cosine down to `min_lr` at
    `max_steps`. `step` counts optimizer steps from 0."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
