"""Predictions with and without a trigger, and the fooling rate.

Fooling rate: among the inputs the model classifies correctly without a trigger (and, for a
targeted attack, whose true label is not the target), the share whose prediction changes when
the trigger is added (targeted: becomes the target).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from steadylm.attack.victim import Victim

EVAL_BATCH = 64


@torch.no_grad()
def predict(
    victim: Victim, rows: Sequence[list[int]], trigger: Sequence[int] | None = None, bar: str = ""
) -> torch.Tensor:
    """Predicted label ids (N,) on the CPU, in the order of `rows`, with `trigger` inserted when
    given; a progress bar named `bar` when one is given. Inputs are batched by length, so a batch
    pads to nearly its own length rather than to the longest input of a random draw (about half
    the token positions of a short-text task)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.zeros(len(rows), dtype=torch.long)
    starts = range(0, len(rows), EVAL_BATCH)
    for i in tqdm(starts, desc=bar, unit="batch", disable=not bar, leave=False):
        batch = order[i : i + EVAL_BATCH]
        ids, mask = victim.batch([rows[j] for j in batch], trigger)
        out[batch] = victim.model(ids, mask).argmax(-1).cpu()
    return out


def eligible(clean: torch.Tensor, labels: torch.Tensor, target: int | None) -> torch.Tensor:
    """(N,) bool: correctly classified and, when targeted, not already of the target label."""
    ok = clean == labels
    return ok if target is None else ok & (labels != target)


def fooled(adv: torch.Tensor, labels: torch.Tensor, target: int | None) -> torch.Tensor:
    return adv != labels if target is None else adv == target


def fooling_rate(
    victim: Victim,
    rows: Sequence[list[int]],
    labels: torch.Tensor,
    trigger: Sequence[int],
    target: int | None,
    clean: torch.Tensor | None = None,
    bar: str = "",
) -> tuple[float, int]:
    """(fooling rate, inputs it is measured on) of the token ids `trigger`; `clean` may pass the
    predictions without a trigger when they are already known."""
    clean = predict(victim, rows, bar=bar) if clean is None else clean
    keep = eligible(clean, labels, target)
    kept = [r for r, k in zip(rows, keep.tolist()) if k]
    if not kept:
        return 0.0, 0
    adv = predict(victim, kept, trigger, bar=bar)
    return float(fooled(adv, labels[keep], target).float().mean()), len(kept)


def text_fooling_rate(
    victim: Victim,
    texts: Sequence[str],
    labels: torch.Tensor,
    trigger_text: str,
    target: int | None,
    bar: str = "",
    clean: torch.Tensor | None = None,
) -> tuple[float, int]:
    """The fooling rate of a trigger given as text, prepended to each text and tokenised with it
    (how a trigger crosses to a model with another tokenizer); `clean` may pass the predictions
    on the texts alone when they are already known."""
    if clean is None:
        clean = predict(victim, victim.encode(texts, 0), bar=bar)
    keep = eligible(clean, labels, target)
    kept = [f"{trigger_text} {t}" for t, k in zip(texts, keep.tolist()) if k]
    if not kept:
        return 0.0, 0
    adv = predict(victim, victim.encode(kept, 0), bar=bar)
    return float(fooled(adv, labels[keep], target).float().mean()), len(kept)


def text_fooling_rates(
    victim: Victim,
    texts: Sequence[str],
    labels: torch.Tensor,
    trigger_texts: Iterable[str],
    target: int | None,
    bar: str = "",
) -> tuple[torch.Tensor, dict[str, float], int]:
    """Several triggers given as text on one classifier: its predictions on the texts alone (N,),
    made once for all of them, each trigger's fooling rate, and the number of inputs the rates
    are measured on (the same for every trigger)."""
    clean = predict(victim, victim.encode(texts, 0), bar=bar)
    rates = {t: text_fooling_rate(victim, texts, labels, t, target, bar, clean)[0]
             for t in trigger_texts}  # fmt: skip
    return clean, rates, int(eligible(clean, labels, target).sum())
