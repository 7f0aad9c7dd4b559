"""HotFlip token search (Ebrahimi et al. 2018, as Wallace et al. 2019 use it for triggers).

Swapping trigger token i from its embedding e_cur to e_w moves the input by e_w − e_cur; to first
order the attacker's gain along a direction d_i (in embedding space) is (e_w − e_cur)·d_i. The best
`k` tokens per position under that score are the candidates, and a beam search over positions,
each candidate scored by the attack objective on a batch, picks the trigger.

The attack objective (lower is better for the attacker), per example:
- untargeted: −CE(logits, true label) (push the true class down);
- targeted:   CE(logits, target)      (pull the target class up).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from steadylm.attack.victim import Victim


def attack_objective(
    logits: torch.Tensor, labels: torch.Tensor, target: int | None
) -> torch.Tensor:
    """Per-example objective (B,) to minimise, from logits (B, C) and true labels (B,)."""
    if target is None:
        return -F.cross_entropy(logits, labels, reduction="none")
    return F.cross_entropy(logits, torch.full_like(labels, target), reduction="none")


def objective_gradient(
    victim: Victim,
    ids: torch.Tensor,
    mask: torch.Tensor,
    trigger_emb: torch.Tensor,
    labels: torch.Tensor,
    target: int | None,
) -> torch.Tensor:
    """∂(mean objective)/∂(trigger embeddings): (L, C), the batch-averaged gradient."""
    x = trigger_emb.detach().clone().requires_grad_(True)
    loss = attack_objective(victim.logits(ids, mask, x), labels, target).mean()
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def hotflip_scores(
    embeddings: torch.Tensor,
    current: torch.Tensor,
    direction: torch.Tensor,
    allowed: torch.Tensor,
) -> torch.Tensor:
    """(L, V) first-order gains (e_w − e_cur_i)·d_i; tokens not `allowed` (V,) get −inf.

    embeddings (V, C); current (L, C) the trigger's rows; direction (L, C) the attacker's ascent."""
    gain = direction @ embeddings.T - (current * direction).sum(-1, keepdim=True)  # (L, V)
    return gain.masked_fill(~allowed, float("-inf"))


def top_candidates(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(L, k) token ids with the highest scores per position."""
    return scores.topk(min(k, scores.shape[1]), dim=1).indices


def beam_search(
    trigger: Sequence[int],
    candidates: torch.Tensor,
    objective: Callable[[list[int]], float],
    beam: int,
) -> tuple[list[int], float]:
    """Best trigger and its objective: positions left to right, each beam trying every candidate
    at that position; the `beam` best (current triggers included) go on to the next position."""
    beams = [(objective(list(trigger)), list(trigger))]
    for pos in range(candidates.shape[0]):
        tried = {tuple(t) for _, t in beams}
        grown = list(beams)
        for _, t in beams:
            for c in candidates[pos].tolist():
                new = t[:pos] + [c] + t[pos + 1 :]
                if tuple(new) not in tried:
                    tried.add(tuple(new))
                    grown.append((objective(new), new))
        beams = sorted(grown, key=lambda b: b[0])[:beam]
    value, best = beams[0]
    return best, value
