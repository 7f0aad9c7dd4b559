"""Triggers of earlier attacks, read back by `--reuse` instead of searched again.

The same classifier, training task, seed and search options give the same batches, the same
power-method start and so the same trigger. Reading a finished search back leaves only the
scoring, which is what transfer needs:
- `--method luat --layer auto`: a study that has already searched each block on its own (LUAT at
  every layer, as a transfer source) holds exactly the searches `auto` would repeat; each given
  layer's trigger is only scored on the selection set (task-to-task transfer, per target domain);
- `--method uat` or `--layer N`: one earlier attack of the same method and layer, whose trigger is
  scored on `--eval-task` and the `--transfer` classifiers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from steadylm.attack.config import AttackConfig
from steadylm.errors import SteadyLMError
from steadylm.jsonsafe import json_safe

# The options that decide what a search finds; the others only score the trigger.
SEARCH_OPTIONS = ("trigger_len", "iters", "candidates", "beam", "batch", "target_label",
                  "max_length", "seed")  # fmt: skip
LUAT_OPTIONS = ("p", "q", "power_iters")  # the singular vector's; uat does not use them


@dataclasses.dataclass
class ReusedTrigger:
    layer: int | None  # None for uat
    trigger: list[int]
    history: list[dict]
    seconds: float  # the original search's
    source: str  # the folder it was read from


def same_classifier(a: str, b: str) -> bool:
    return a == b or Path(a).resolve() == Path(b).resolve()


def read_reused(cfg: AttackConfig, n_layer: int) -> dict[int | None, ReusedTrigger]:
    """The trigger of each `cfg.reuse` folder by its layer (None for uat), after checking that it
    is a finished search of the kind `cfg` would run: the same method, a single layer (the same
    one unless `cfg` is luat --layer auto), classifier, task and search options."""
    ours = json_safe(dataclasses.asdict(cfg))
    options = SEARCH_OPTIONS + (LUAT_OPTIONS if cfg.method == "luat" else ())
    out: dict[int | None, ReusedTrigger] = {}
    for folder in cfg.reuse_runs:
        r = _read(folder)
        _check_kind(folder, r, cfg)
        theirs = r.get("options", {})
        if not same_classifier(str(r.get("classifier")), cfg.classifier):
            raise SteadyLMError(
                f"--reuse {folder}: attacks {r.get('classifier')}, not {cfg.classifier}"
            )
        if theirs.get("task") != cfg.task:
            raise SteadyLMError(
                f"--reuse {folder}: searched on {theirs.get('task')}, not {cfg.task}"
            )
        differ = [k for k in options if theirs.get(k) != ours[k]]
        if differ:
            k = differ[0]
            raise SteadyLMError(
                f"--reuse {folder}: searched with {k} = {theirs.get(k)!r}, this attack has "
                f"{ours[k]!r} (the search options must match: {', '.join(differ)})"
            )
        layer = r["layer"] if cfg.method == "luat" else None
        if layer is not None and layer > n_layer:
            raise SteadyLMError(f"--reuse {folder}: layer {layer}, the classifier has 1..{n_layer}")
        if layer in out:
            raise SteadyLMError(
                f"--reuse: layer {layer} given twice ({out[layer].source}, {folder})"
            )
        seconds = float(r.get("timings", {}).get("search_seconds", 0.0))
        out[layer] = ReusedTrigger(layer, list(r["trigger_ids"]), r.get("history", []), seconds,
                                   folder)  # fmt: skip
    return out


def _check_kind(folder: str, r: dict[str, Any], cfg: AttackConfig) -> None:
    """`r` is a search `cfg` can take the trigger of: its method and, for luat, a single layer
    (`cfg`'s own unless `cfg` picks the layer)."""
    if r.get("method") != cfg.method:
        raise SteadyLMError(f"--reuse {folder}: a {r.get('method')} attack, this is {cfg.method}")
    if cfg.method == "uat":
        return
    if r.get("layer_selection"):
        raise SteadyLMError(f"--reuse {folder}: a --layer auto attack; give single-layer ones")
    if not isinstance(r.get("layer"), int):
        raise SteadyLMError(f"--reuse {folder}: not a single-layer luat attack")
    wanted = cfg.layer_number
    if wanted is not None and r["layer"] != wanted:
        raise SteadyLMError(f"--reuse {folder}: searched at layer {r['layer']}, not {wanted}")


def _read(folder: str) -> dict[str, Any]:
    path = Path(folder) / "attack.json"
    if not path.is_file():
        raise SteadyLMError(f"--reuse {folder}: no attack.json (not a finished attack)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SteadyLMError(f"--reuse {folder}: attack.json is not JSON ({e.msg})") from None
