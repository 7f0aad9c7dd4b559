"""Triggers of earlier single-layer LUAT attacks, read back for `--layer auto --reuse`.

`--layer auto` searches a trigger at every block and keeps the best on a selection set. A study
that has already searched each block on its own (LUAT at every layer, as a transfer source) holds
exactly those searches: the same classifier, training task, seed and search options give the same
batches, the same power-method start and so the same trigger. Reading them back leaves only the
scoring on the selection set, which is what task-to-task transfer needs for each target domain.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from steadylm.attack.config import AttackConfig
from steadylm.errors import SteadyLMError
from steadylm.jsonsafe import json_safe

# The options that decide what a search at one layer finds; the others only score the trigger.
SEARCH_OPTIONS = ("trigger_len", "p", "q", "power_iters", "iters", "candidates", "beam", "batch",
                  "target_label", "max_length", "seed")  # fmt: skip


@dataclasses.dataclass
class ReusedTrigger:
    layer: int
    trigger: list[int]
    history: list[dict]
    seconds: float  # the original search's
    source: str  # the folder it was read from


def _same_classifier(a: str, b: str) -> bool:
    return a == b or Path(a).resolve() == Path(b).resolve()


def read_reused(cfg: AttackConfig, n_layer: int) -> dict[int, ReusedTrigger]:
    """The trigger of each `cfg.reuse` folder by its layer, after checking that it is a finished
    single-layer luat attack whose search is the one `cfg` would run at that layer."""
    ours = json_safe(dataclasses.asdict(cfg))
    out: dict[int, ReusedTrigger] = {}
    for folder in cfg.reuse_runs:
        r = _read(folder)
        theirs = r.get("options", {})
        if r.get("method") != "luat" or not isinstance(r.get("layer"), int):
            raise SteadyLMError(f"--reuse {folder}: not a single-layer luat attack")
        if r.get("layer_selection"):
            raise SteadyLMError(f"--reuse {folder}: a --layer auto attack; give single-layer ones")
        if not _same_classifier(str(r.get("classifier")), cfg.classifier):
            raise SteadyLMError(
                f"--reuse {folder}: attacks {r.get('classifier')}, not {cfg.classifier}"
            )
        if theirs.get("task") != cfg.task:
            raise SteadyLMError(
                f"--reuse {folder}: searched on {theirs.get('task')}, not {cfg.task}"
            )
        differ = [k for k in SEARCH_OPTIONS if theirs.get(k) != ours[k]]
        if differ:
            k = differ[0]
            raise SteadyLMError(
                f"--reuse {folder}: searched with {k} = {theirs.get(k)!r}, this attack has "
                f"{ours[k]!r} (the search options must match: {', '.join(differ)})"
            )
        layer = r["layer"]
        if layer > n_layer:
            raise SteadyLMError(f"--reuse {folder}: layer {layer}, the classifier has 1..{n_layer}")
        if layer in out:
            raise SteadyLMError(
                f"--reuse: layer {layer} given twice ({out[layer].source}, {folder})"
            )
        seconds = float(r.get("timings", {}).get("search_seconds", 0.0))
        out[layer] = ReusedTrigger(layer, list(r["trigger_ids"]), r.get("history", []), seconds,
                                   folder)  # fmt: skip
    return out


def _read(folder: str) -> dict[str, Any]:
    path = Path(folder) / "attack.json"
    if not path.is_file():
        raise SteadyLMError(f"--reuse {folder}: no attack.json (not a finished attack)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SteadyLMError(f"--reuse {folder}: attack.json is not JSON ({e.msg})") from None
