"""Early warning: does a signal leave its normal range before the loss blows up, more often than
the same number of alarms placed at random would?

Instability events are defined from the training loss alone, so that no scored signal defines
the events it is scored on: an event starts at a step whose loss is not finite or at least
RISE nats above the lowest loss of the steps before it, and lasts while that holds. A signal
warns of an event when one of its out-of-range steps lies in the `horizon` steps before the
event's first step (the first step itself does not count: moving with the loss is not warning).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from steadylm.experiments.runs import Run
from steadylm.experiments.tevstats import SIGNALS, signal, signals_logged

RISE = 1.0  # nats above the running minimum that make an instability event
DRAWS = 2000  # random placements of the alarms behind the chance baseline
OTHER_SIGNALS = {"grad_norm": "gradient norm"}


def out_of_range(values: np.ndarray, window: int, k: float) -> np.ndarray:
    """flag[i]: the first difference d_i = x_i − x_{i−1} lies more than k standard deviations
    from the mean of the `window` differences before it (or is not finite). Only the past is
    used, so a flag is something a monitor could have raised at that step. The first window+1
    points cannot be judged and are never flagged."""
    x = np.asarray(values, dtype=float)
    flags = np.zeros(len(x), dtype=bool)
    if len(x) < window + 2:
        return flags
    d = np.diff(x)
    d_clean = np.where(np.isfinite(d), d, np.nan)
    past = np.lib.stride_tricks.sliding_window_view(d_clean, window)[
        : len(d) - window
    ]  # d[i-1-window:i-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows after a divergence
        m, s = np.nanmean(past, axis=1), np.nanstd(past, axis=1)
    current = d[window:]  # d_i for i = window+1 ..
    judged = np.isfinite(m) & np.isfinite(s)
    with np.errstate(invalid="ignore"):
        out = ~np.isfinite(current) | (judged & (np.abs(current - m) > k * s))
    flags[window + 1 :] = out
    return flags


def loss_events(steps: np.ndarray, loss: np.ndarray, rise: float = RISE) -> list[int]:
    """First steps of instability events: the loss is not finite, or >= `rise` above the lowest
    finite loss before it; an event lasts while that holds, and the next starts after it ends."""
    onsets, inside, low = [], False, np.inf
    for s, x in zip(steps.tolist(), loss.tolist()):
        bad = not np.isfinite(x) or x >= low + rise
        if bad and not inside:
            onsets.append(int(s))
        inside = bad
        if np.isfinite(x):
            low = min(low, x)
    return onsets


class Outcome(StrEnum):
    WARNED = "warned"  # out of range in the horizon before the event
    AT_EVENT = "at the event"  # out of range only at the event's first step
    MISSED = "missed"
    UNSCORABLE = "unscorable"  # no judged step of the signal in the horizon before the event


@dataclass(frozen=True)
class Lead:
    outcome: Outcome
    steps: int | None = None  # for WARNED: event step minus the earliest flag in the horizon
    reason: str = ""  # for UNSCORABLE


@dataclass
class Event:
    run: str
    step: int
    peak: float  # the highest loss of the event (inf if not finite)
    leads: dict[str, Lead] = field(default_factory=dict)


@dataclass
class SignalScore:
    """One signal over every event: hits against the hits of as many alarms at random steps."""

    scored: int = 0
    warned: int = 0
    at_event: int = 0
    missed: int = 0
    unscorable: int = 0
    leads: list[int] = field(default_factory=list)
    alarms: int = 0  # out-of-range steps over the judged steps of the runs with events
    chance_hits: np.ndarray | None = None  # per draw

    @property
    def chance_mean(self) -> float | None:
        return float(self.chance_hits.mean()) if self.chance_hits is not None else None

    @property
    def p(self) -> float | None:
        """One-sided: the share of draws with at least as many warned events, counting the observation."""
        if self.chance_hits is None:
            return None
        return (int((self.chance_hits >= self.warned).sum()) + 1) / (len(self.chance_hits) + 1)

    @property
    def median_lead(self) -> float | None:
        return float(np.median(self.leads)) if self.leads else None


def _score_run(
    run: Run,
    key: str,
    onsets: list[int],
    window: int,
    k: float,
    horizon: int,
    rng: np.random.Generator,
    draws: int,
) -> tuple[dict[int, Lead], int, np.ndarray]:
    """Leads of one signal for one run's events, its alarm count, and the warned count of each
    random placement of that many alarms over the same judged steps."""
    steps, x = signal(run, key)
    none = np.zeros(draws, dtype=int)
    if len(steps) < window + 2:
        return {e: Lead(Outcome.UNSCORABLE, reason="series too short") for e in onsets}, 0, none
    bad = np.flatnonzero(~np.isfinite(x))
    idx = np.arange(len(steps))
    judged = (idx > window) & (
        idx <= (bad[0] if len(bad) else len(x))
    )  # nothing after a first non-finite
    flags = out_of_range(x, window, k) & judged
    leads: dict[int, Lead] = {}
    spans = []  # each scorable event's window [lo, hi) in positions of the judged steps
    jsteps = steps[judged]
    for e in onsets:
        before = judged & (steps >= e - horizon) & (steps < e)
        if not before.any():
            leads[e] = Lead(Outcome.UNSCORABLE, reason="no judged step before it")
            continue
        spans.append((int(np.searchsorted(jsteps, e - horizon)), int(np.searchsorted(jsteps, e))))
        hit = steps[flags & before]
        if len(hit):
            leads[e] = Lead(Outcome.WARNED, int(e - hit.min()))
        elif (flags & (steps == e)).any():
            leads[e] = Lead(Outcome.AT_EVENT)
        else:
            leads[e] = Lead(Outcome.MISSED)
    alarms = int(flags.sum())
    n = len(jsteps)
    if not spans or alarms == 0 or n == 0:
        return leads, alarms, none
    keys = rng.random((draws, n))
    kth = np.partition(keys, alarms - 1, axis=1)[:, alarms - 1 : alarms]
    csum = np.concatenate([np.zeros((draws, 1), dtype=int), np.cumsum(keys <= kth, axis=1)], axis=1)
    hits = sum(((csum[:, hi] - csum[:, lo]) > 0).astype(int) for lo, hi in spans)
    return leads, alarms, hits


def _run_events(name: str, steps: np.ndarray, loss: np.ndarray, onsets: list[int]) -> list[Event]:
    """One Event per onset of a run, each lasting until the next onset, with its peak loss
    (inf when a loss in it is not finite)."""
    mine = []
    for i, e in enumerate(onsets):
        end = onsets[i + 1] if i + 1 < len(onsets) else None
        seg = loss[(steps >= e) & ((steps < end) if end is not None else True)]
        finite = seg[np.isfinite(seg)]
        peak = float(finite.max()) if len(finite) == len(seg) else float("inf")
        mine.append(Event(name, e, peak))
    return mine


def _tally(sc: SignalScore, key: str, events: list[Event]) -> None:
    """Count signal `key`'s outcomes over all events into `sc`: warned (with the leads), at the
    event, missed, unscorable, and how many were scored; no chance baseline if none was."""
    for ev in events:
        lead = ev.leads[key]
        sc.unscorable += lead.outcome is Outcome.UNSCORABLE
        sc.warned += lead.outcome is Outcome.WARNED
        sc.at_event += lead.outcome is Outcome.AT_EVENT
        sc.missed += lead.outcome is Outcome.MISSED
        if lead.outcome is Outcome.WARNED:
            assert lead.steps is not None  # a WARNED lead always has its steps
            sc.leads.append(lead.steps)
    sc.scored = len(events) - sc.unscorable
    if not sc.scored:
        sc.chance_hits = None


def early_warning(
    runs: list[Run],
    window: int,
    k: float,
    horizon: int,
    rise: float = RISE,
    draws: int = DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Loss-defined events in every run, each scored for every signal, with the chance baseline:
    per run, the signal's number of out-of-range steps placed at random among its judged steps,
    `draws` times, scored by the same rule."""
    keys = signals_logged(runs) + [
        k_ for k_ in OTHER_SIGNALS if any(k_ in r for x in runs for r in x.rows)
    ]
    rng = np.random.default_rng(seed)
    events: list[Event] = []
    scores = {key: SignalScore(chance_hits=np.zeros(draws, dtype=int)) for key in keys}
    for run in runs:
        steps, loss = run.series("loss")
        onsets = loss_events(steps, loss, rise)
        if not onsets:
            continue
        mine = _run_events(run.name, steps, loss, onsets)
        for key in keys:
            leads, alarms, hits = _score_run(run, key, onsets, window, k, horizon, rng, draws)
            sc = scores[key]
            sc.alarms += alarms
            sc.chance_hits += hits
            for ev in mine:
                ev.leads[key] = leads[ev.step]
        events += mine
    for key, sc in scores.items():
        _tally(sc, key, events)
    names = {**SIGNALS, **OTHER_SIGNALS}
    return {
        "window": window,
        "k": k,
        "horizon": horizon,
        "rise": rise,
        "draws": draws,
        "events": events,
        "scores": scores,
        "names": {key: names[key] for key in keys},
    }
