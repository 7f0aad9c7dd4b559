"""Tables of the trigger study: the transfer matrix, LUAT − UAT on each victim pair, task-to-task.

    python experiments/attack_transfer_table.py STUDY_DIR [--out FILE.md]

Reads STUDY_DIR/transfer.json (experiments/attack_transfer.py) and the task-to-task attacks in
STUDY_DIR/SOURCE-rt-to-DOMAIN/*/attack.json (experiments/attack-study.sh). Every difference is
LUAT − UAT paired by search seed (the same seed draws the same batches for both searches).

Pooled over pairs: each source seed contributes the mean of its differences over the other
families (each family, a pre-trained base, first averaged over its victims, so copies of one
model count once; the victims share the seed's two triggers, so they are not independent
draws); the sources' seed variances are pooled (df = Σ (seeds − 1)). The smallest effect the design could
detect is stated at 80% power and the 5% level; p-values over the seven LUAT rows (six blocks
and the selected one) are Holm-corrected.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from steadylm.experiments.stats import (
    Estimate,
    detectable,
    estimate,
    holm,
    mean_difference,
    mean_sd,
    paired_differences,
)

PAPER_GAIN = 0.093  # LUAT − UAT in model-to-model transfer, Tsymboi et al. 2023 (mean over pairs)
Rates = dict[str, dict[int, float]]  # row name -> seed -> fooling rate


def _rows(attacks: list[dict[str, Any]], rate) -> Rates:
    out: Rates = defaultdict(dict)
    for a in attacks:
        r = rate(a)
        if r is not None:
            out[_key(a)][int(a["seed"])] = r
    return out


def _key(a: dict[str, Any]) -> str:
    if a["method"] == "uat":
        return "uat"
    return "luat, selected" if a["selected"] else f"luat, block {a['layer']}"


def _order(keys: Iterable[str]) -> list[str]:
    """uat, then luat by block number (any depth), then the selected block."""

    def rank(k: str) -> tuple[int, int]:
        if k == "uat":
            return (0, 0)
        return (2, 0) if k == "luat, selected" else (1, int(k.rsplit(" ", 1)[1]))

    return sorted(set(keys), key=rank)


def _fmt(values: Iterable[float]) -> str:
    s = mean_sd(values)
    if s["mean"] is None:
        return ""
    return f"{s['mean']:.3f}" + ("" if s["sd"] is None else f" ± {s['sd']:.3f}")


def _diff(e: Estimate | None) -> str:
    if e is None:
        return ""
    ci = "" if e.lo is None else f" [{e.lo:+.3f}, {e.hi:+.3f}]"
    return f"{e.mean:+.3f}{ci}"


def _pooled(per_source: dict[str, list[float]]) -> Estimate | None:
    """The mean over sources of each source's mean, with the sources' seed variances pooled."""
    cells = [v for v in per_source.values() if v]
    if not cells:
        return None
    mean = float(np.mean([np.mean(v) for v in cells]))
    dof = sum(len(v) - 1 for v in cells)
    if dof < 1:
        return estimate(mean, sum(map(len, cells)), None, 0)
    s2 = sum(float(((np.asarray(v) - np.mean(v)) ** 2).sum()) for v in cells) / dof
    se = math.sqrt(sum(s2 / len(v) for v in cells)) / len(cells)
    return estimate(mean, sum(map(len, cells)), se, dof)


# ------------------------------------------------------------------ sections


def victims_table(data: dict[str, Any]) -> list[str]:
    s = data["scoring"]
    lines = [f"Scored on the first {s['max_eval'] or 'all'} {s['eval_task']} test texts; the fooling "
             "rate counts the texts each victim classifies correctly without a trigger.", "",
             "| victim | pre-trained base | clean accuracy | inputs scored | neutral 'the the the' |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, v in data["victims"].items():
        lines.append(f"| {name} | {v['base'] or '?'} | {v['clean_accuracy']:.3f} | {v['n_eval']} | "
                     f"{v['baseline_fooling_rate']:.3f} |")  # fmt: skip
    return lines


def matrix(data: dict[str, Any]) -> list[str]:
    """Per source and row: own fooling rate and each victim's, mean ± sd over seeds; cells of a
    victim with the source's initialisation are marked (an upper bound, not transfer)."""
    names = list(data["victims"])
    lines = ["| source | trigger | own | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]  # fmt: skip
    for source, attacks in _by_source(data).items():
        own = _rows(attacks, lambda a: a["own_fooling_rate"])
        cols = {n: _rows(attacks, lambda a, n=n: a["scores"].get(n)) for n in names}
        base = data["victims"][source]["base"]
        for key in _order(own):
            cells = []
            for n in names:
                cell = _fmt(cols[n][key].values()) if key in cols[n] else "—"
                same = n != source and data["victims"][n]["base"] == base
                cells.append(f"{cell} ‡" if same and cell != "—" else cell)
            lines.append(f"| {source} | {_label(attacks, key)} | {_fmt(own[key].values())} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    return lines


def _label(attacks: list[dict[str, Any]], key: str) -> str:
    if key != "luat, selected":
        return key
    picked = sorted((a["seed"], a["layer"]) for a in attacks if _key(a) == key)
    return "luat, selected (block " + ", ".join(f"{b} s{s}" for s, b in picked) + ")"


def _by_source(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in data["attacks"]:
        if a["source"] is None:
            raise SystemExit(f"{a['folder']}: its classifier is not one of the --victim names")
        out[a["source"]].append(a)
    return out


def gaps(data: dict[str, Any]) -> list[str]:
    """LUAT − UAT paired by seed: on the source itself, on each victim of another family, and
    pooled over those."""
    victims = data["victims"]
    sources = _by_source(data)
    pairs = [(s, n) for s in sources for n in victims
             if n == s or victims[n]["base"] != victims[s]["base"]]  # fmt: skip
    keys = [k for k in _order(_key(a) for a in data["attacks"]) if k != "uat"]
    head = [f"{s} → {n}" if n != s else f"{s} (own)" for s, n in pairs]
    lines = ["| LUAT − UAT | " + " | ".join(head) + " | cross-family, pooled | p (Holm) | "
             "detectable |", "|---|" + "---|" * (len(pairs) + 3)]  # fmt: skip
    pooled, cells = {}, {}
    for key in keys:
        per_source: dict[str, list[float]] = {}
        for s, n in pairs:
            rate = (lambda a: a["own_fooling_rate"]) if n == s else (
                lambda a, n=n: a["scores"].get(n))  # fmt: skip
            r = _rows(sources[s], rate)
            diffs = paired_differences(r.get(key, {}), r.get("uat", {}))
            cells[key, s, n] = mean_difference(diffs) if diffs else None
        for s in sources:
            # seed -> family (pre-trained base) -> differences on that family's victims
            per_seed: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for n in [n for ss, n in pairs if ss == s and n != s]:
                r = _rows(sources[s], lambda a, n=n: a["scores"].get(n))
                for seed in sorted(set(r.get(key, {})) & set(r.get("uat", {}))):
                    per_seed[seed][victims[n]["base"]].append(r[key][seed] - r["uat"][seed])
            per_source[s] = [float(np.mean([np.mean(d) for d in fam.values()]))
                             for fam in per_seed.values()]  # fmt: skip
        pooled[key] = _pooled(per_source)
    adjusted = holm([None if e is None else e.p for e in pooled.values()])
    for key, p in zip(keys, adjusted):
        e = pooled[key]
        det = detectable(e)
        lines.append(f"| {key} | " + " | ".join(_diff(cells[key, s, n]) for s, n in pairs)
                     + f" | {_diff(e)} | {'' if p is None else f'{p:.2f}'} | "
                     f"{'' if det is None else f'{det:.3f}'} |")  # fmt: skip
    return lines


def task_to_task(study: Path) -> list[str]:
    """Per source and domain, UAT and LUAT (block picked on the domain) over seeds; then per
    source the mean over domains (one value per seed: a seed's triggers serve every domain), and
    both sources pooled as in the model-to-model table."""
    lines = ["| source → domain | inputs | neutral | UAT | LUAT, block picked on the domain | "
             "blocks picked | LUAT − UAT |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    per_seed: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for folder in sorted(study.glob("*-rt-to-*")):
        runs = [json.loads(f.read_text()) for f in sorted(folder.glob("*/attack.json"))]
        if not runs:
            continue
        uat = {r["options"]["seed"]: r for r in runs if r["method"] == "uat"}
        luat = {r["options"]["seed"]: r for r in runs if r["method"] == "luat"}
        rate = {s: r["fooling_rate"] for s, r in uat.items()}
        lrate = {s: r["fooling_rate"] for s, r in luat.items()}
        source = folder.name.split("-rt-to-")[0]
        for seed in sorted(set(rate) & set(lrate)):
            per_seed[source][seed].append(lrate[seed] - rate[seed])
        diffs = paired_differences(lrate, rate)
        blocks = ", ".join(f"{luat[s]['layer']} s{s}" for s in sorted(luat))
        name = folder.name.replace("-rt-to-", " → ")
        lines.append(f"| {name} | {runs[0]['n_eval']} | {_fmt(r['baseline_fooling_rate'] for r in runs)} "
                     f"| {_fmt(rate.values())} | {_fmt(lrate.values())} | {blocks} | "
                     f"{_diff(mean_difference(diffs) if diffs else None)} |")  # fmt: skip
    means = {src: [float(np.mean(v)) for v in seeds.values()] for src, seeds in per_seed.items()}
    for src, values in means.items():
        lines.append(f"| {src}, mean over domains | | | | | | {_diff(mean_difference(values))} |")
    if len(means) > 1:
        e = _pooled(means)
        det = detectable(e)
        lines.append(f"| all sources, pooled | | | | | | {_diff(e)}"
                     f"{'' if det is None else f' (detectable {det:.3f})'} |")  # fmt: skip
    return lines


def render(study: Path) -> str:
    data = json.loads((study / "transfer.json").read_text())
    sections = [
        ("Victims", victims_table(data)),
        (
            "Fooling rate of each source's triggers on each victim (mean ± sd over search seeds; "
            "‡: same pre-trained initialisation as the source, an upper bound rather than transfer)",
            matrix(data),
        ),
        (
            f"LUAT − UAT, paired by search seed [95% t interval]; the paper reports +{PAPER_GAIN:.3f} "
            "for model-to-model transfer",
            gaps(data),
        ),
        (
            "Task-to-task: triggers searched on rt, scored on another domain's test split",
            task_to_task(study),
        ),
    ]
    out = []
    for title, lines in sections:
        out += [f"## {title}", "", *lines, ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    text = render(args.study)
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
