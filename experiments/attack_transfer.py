"""Every trigger of a set of `steadylm attack` runs scored as text on every given classifier.

    python experiments/attack_transfer.py ATTACK_DIR... --victim NAME=CLASSIFIER ... \
        --out transfer.json

`steadylm attack --transfer` scores one trigger on other classifiers inside its own run, and so
loads each classifier and predicts its clean and neutral-trigger test inputs once per trigger.
A study with dozens of triggers and a slow victim (SmolLM2 reads about 10 texts a second on one
CPU thread) pays that dozens of times. Here each classifier is loaded once, its clean and "the
the the" predictions are made once, and each trigger costs one pass over the inputs it
classifies correctly; the fooling rates are the ones `--transfer` computes (the same functions).

A trigger is not scored on the classifier it was searched on (its own fooling rate, on token ids,
is in its attack.json and copied here). Each victim's `base` (the pre-trained model it was
fine-tuned from, from its run's config) is recorded so that a table can keep same-initialisation
pairs apart. A trigger text found by several attacks is scored once per classifier, and the
texts an earlier run already scored into --out (same classifier path, same scoring) are read
back, so adding attacks to a study scores only their triggers. All attacks must share the
scoring task, test-set size, trigger length and target.
Writes --out (JSON); experiments/attack_transfer_table.py turns it into tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from steadylm.attack.evaluate import text_fooling_rates
from steadylm.attack.job import resolve_target
from steadylm.attack.reuse import same_classifier
from steadylm.attack.victim import NEUTRAL_WORD, load_victim
from steadylm.device import resolve_device
from steadylm.tasks import load_task

SHARED = ("eval_task", "max_eval", "trigger_len", "target_label", "max_length")


def read_attacks(folders: list[Path]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each finished attack's record and the scoring options they all share."""
    runs = []
    for folder in folders:
        path = folder / "attack.json"
        if not path.is_file():
            raise SystemExit(f"{folder}: no attack.json (not a finished attack)")
        r = json.loads(path.read_text())
        r["folder"] = str(folder)
        runs.append(r)
    if not runs:
        raise SystemExit("give at least one attack folder")
    shared = {json.dumps(_scoring(r), sort_keys=True) for r in runs}
    if len(shared) > 1:
        raise SystemExit(f"the attacks are scored differently: {sorted(shared)}")
    return runs, _scoring(runs[0])


def _scoring(r: dict[str, Any]) -> dict[str, Any]:
    o = r["options"]
    return {"eval_task": r["eval_task"], "max_eval": o["max_eval"], "trigger_len": o["trigger_len"],
            "target_label": o["target_label"], "max_length": o["max_length"]}  # fmt: skip


def base_of(classifier: str) -> str:
    """The pre-trained model a `steadylm finetune` run started from ('' when not a run)."""
    config = Path(classifier) / "config.toml"
    if not config.is_file():
        return ""
    return str(tomllib.loads(config.read_text()).get("finetune", {}).get("base", ""))


def score_victim(
    path: str,
    runs: list[dict[str, Any]],
    scoring: dict[str, Any],
    device: torch.device,
    known: dict[str, float],
) -> tuple[dict[str, Any], dict[str, float]]:
    """One classifier: its clean accuracy and neutral baseline, and each other attack's fooling
    rate on it, by attack folder; the trigger texts in `known` (text -> rate) are not scored
    again."""
    t0 = time.perf_counter()
    victim = load_victim(path, device, scoring["max_length"])
    task = load_task(scoring["eval_task"], progress=False)
    test = task.test[: scoring["max_eval"] or None]
    texts = [e.text for e in test]
    labels = torch.tensor([e.label for e in test], dtype=torch.long)
    target = resolve_target(scoring["target_label"], victim.labels)
    neutral = " ".join([NEUTRAL_WORD] * scoring["trigger_len"])
    others = [r for r in runs if not same_classifier(r["classifier"], path)]
    new = sorted({r["trigger_text"] for r in others} - set(known) - {neutral})
    bar = tqdm([neutral, *new], desc=Path(path).name, unit="trigger")
    clean, by_text, n = text_fooling_rates(victim, texts, labels, bar, target)
    base = by_text[neutral]
    by_text = {**known, **by_text}  # a trigger found more than once is scored once
    rates = {r["folder"]: by_text[r["trigger_text"]] for r in others}
    info = {"path": path, "base": base_of(path), "n_eval": n,
            "clean_accuracy": float((clean == labels).float().mean()),
            "baseline_fooling_rate": base, "seconds": time.perf_counter() - t0,
            "scored_now": len(new), "by_trigger_text": by_text}  # fmt: skip
    return info, rates


def known_rates(out: Path, scoring: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per classifier path, the trigger texts an earlier run of this script scored into `out`
    with the same scoring options (none when `out` does not exist or was scored otherwise)."""
    if not out.is_file():
        return {}
    earlier = json.loads(out.read_text())
    if earlier.get("scoring") != scoring:
        return {}
    return {v["path"]: v.get("by_trigger_text", {}) for v in earlier["victims"].values()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attacks", type=Path, nargs="+", help="attack run folders")
    parser.add_argument("--victim", action="append", required=True, metavar="NAME=CLASSIFIER",
                        help="a classifier to score every trigger on, under a short name")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    victims = dict(v.split("=", 1) for v in args.victim if "=" in v)
    if len(victims) != len(args.victim):
        raise SystemExit("--victim: give NAME=CLASSIFIER, each NAME once")
    runs, scoring = read_attacks(args.attacks)
    device = resolve_device(args.device, option="--device")
    known = known_rates(args.out, scoring)
    out: dict[str, Any] = {"scoring": scoring, "victims": {}, "attacks": []}
    scores: dict[str, dict[str, float]] = {r["folder"]: {} for r in runs}
    for name, path in victims.items():
        info, rates = score_victim(path, runs, scoring, device, known.get(path, {}))
        out["victims"][name] = info
        for folder, rate in rates.items():
            scores[folder][name] = rate
        print(f"{name}: clean accuracy {info['clean_accuracy']:.3f}, neutral {info['baseline_fooling_rate']:.3f}, "
              f"{info['scored_now']} new triggers scored in {info['seconds']:.0f} s", file=sys.stderr)  # fmt: skip
    for r in runs:
        own = next((n for n, p in victims.items() if same_classifier(p, r["classifier"])), None)
        out["attacks"].append({
            "folder": r["folder"], "classifier": r["classifier"], "source": own,
            "source_base": base_of(r["classifier"]), "method": r["method"], "layer": r["layer"],
            "selected": bool(r.get("layer_selection")), "seed": r["options"]["seed"], "trigger_text": r["trigger_text"],
            "own_fooling_rate": r["fooling_rate"], "scores": scores[r["folder"]],
        })  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
