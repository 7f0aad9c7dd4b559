"""The trigger search shared by UAT and LUAT; only the direction that proposes candidates differs.

Each iteration draws a batch of training inputs (those the model gets right, and for a targeted
attack not already of the target label), then
1. takes a direction d (L, C) in trigger-embedding space at the current trigger:
   - uat:  d = −∂(mean attack objective)/∂(trigger embeddings), the loss gradient (Wallace et al.);
   - luat: d = the (p,q)-singular vector of block ℓ's Jacobian (`jacobian.layer_singular`),
     signed so that it does not oppose the loss gradient: ±v are equally singular, and the
     sign that increases the attack objective to first order is the one a HotFlip step wants;
2. HotFlip scores give the top `candidates` tokens per position along d;
3. a beam search over positions, scored by the attack objective on the batch, picks the trigger.
Both methods therefore share the candidate filter, the beam search and its scoring, so a
difference between them comes from the direction alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from steadylm.attack.config import AttackConfig
from steadylm.attack.evaluate import eligible, predict
from steadylm.attack.hotflip import (
    attack_objective,
    beam_search,
    hotflip_scores,
    objective_gradient,
    top_candidates,
)
from steadylm.attack.jacobian import layer_singular
from steadylm.attack.victim import Victim
from steadylm.errors import SteadyLMError


@dataclass
class SearchResult:
    trigger: list[int]
    layer: int | None  # the perturbed block (luat), None for uat
    history: list[dict] = field(default_factory=list)  # per iteration: objective, trigger, s
    seconds: float = 0.0


class Batches:
    """Training batches in a seeded order, cycling; each keeps only the eligible inputs."""

    def __init__(self, victim: Victim, rows: list[list[int]], labels: torch.Tensor,
                 size: int, target: int | None, seed: int):  # fmt: skip
        self.victim, self.rows, self.labels = victim, rows, labels
        self.size, self.target = size, target
        self.order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        self.pos = 0

    def restart(self) -> None:
        """Back to the first batch (every layer of `--layer auto` searches on the same batches)."""
        self.pos = 0

    def next(self) -> tuple[list[list[int]], torch.Tensor]:
        for _ in range(max(1, len(self.rows) // self.size) + 1):
            if self.pos >= len(self.order):
                self.pos = 0
            index = self.order[self.pos : self.pos + self.size].tolist()
            self.pos += self.size
            rows = [self.rows[i] for i in index]
            labels = self.labels[index]
            keep = eligible(predict(self.victim, rows), labels, self.target)
            if bool(keep.any()):
                return [r for r, k in zip(rows, keep.tolist()) if k], labels[keep]
        raise SteadyLMError(
            "no training input to attack: the classifier gets none right"
            + ("" if self.target is None else " outside the target label")
        )


def direction(
    victim: Victim,
    ids: torch.Tensor,
    mask: torch.Tensor,
    trigger_emb: torch.Tensor,
    labels: torch.Tensor,
    cfg: AttackConfig,
    target: int | None,
    layer: int | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float | None]:
    """The attacker's ascent direction (L, C) and, for luat, the singular value."""
    ascent = -objective_gradient(victim, ids, mask, trigger_emb, labels, target)
    if layer is None:
        return ascent, None
    v, s = layer_singular(
        victim, ids, mask, trigger_emb, layer, cfg.p, cfg.q, cfg.power_iters, generator
    )
    return (v if float((v * ascent).sum()) >= 0 else -v), s


def batch_objective(
    victim: Victim, rows: list[list[int]], labels: torch.Tensor, target: int | None
) -> Callable[[list[int]], float]:
    """trigger ids -> the mean attack objective on the batch (`rows`, `labels`)."""

    @torch.no_grad()
    def objective(trigger: list[int]) -> float:
        ids, mask = victim.batch(rows, trigger)
        return float(attack_objective(victim.model(ids, mask), labels, target).mean())

    return objective


def search_trigger(
    victim: Victim,
    batches: Batches,
    cfg: AttackConfig,
    target: int | None,
    layer: int | None,
    allowed: torch.Tensor,
    embeddings: torch.Tensor,
    progress: bool = True,
    desc: str = "search",
) -> SearchResult:
    """`cfg.iters` iterations of direction, candidates and beam search from the neutral trigger."""
    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed)
    trigger = victim.neutral_trigger(cfg.trigger_len)
    result = SearchResult(trigger, layer)
    bar = tqdm(range(cfg.iters), desc=desc, unit="iter", disable=not progress, leave=False)
    for it in bar:
        rows, labels = batches.next()
        labels = labels.to(victim.device)
        ids, mask = victim.batch(rows, trigger)
        current = victim.token_embeddings(trigger)  # (L, C)
        d, s = direction(victim, ids, mask, current, labels, cfg, target, layer, generator)
        candidates = top_candidates(hotflip_scores(embeddings, current, d, allowed), cfg.candidates)

        objective = batch_objective(victim, rows, labels, target)
        trigger, value = beam_search(trigger, candidates, objective, cfg.beam)
        result.history.append(
            {
                "iter": it,
                "objective": value,
                "trigger_ids": list(trigger),
                "singular_value": s,
                "batch": len(rows),
            }  # fmt: skip
        )
        bar.set_postfix_str(f"{victim.decode(trigger)!r} {value:.3f}")
    result.trigger = trigger
    result.seconds = time.perf_counter() - t0
    return result
