"""experiments/attack_table.py: fooling rates over seeds, paired against UAT; mixes refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture()
def attack_table(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import attack_table

    return attack_table


def _write(root: Path, name: str, method: str, layer, seed: int, rate: float, transfer=None, **budget) -> None:
    options = {"seed": seed, "iters": 3, "batch": 32, "candidates": 10, "beam": 1, "trigger_len": 3,
               "max_eval": 300, "power_iters": 5, "p": "inf", "q": 5.0, **budget}
    run = {"method": method, "layer": layer, "fooling_rate": rate, "baseline_fooling_rate": 0.02,
           "baseline_trigger_text": "the the the", "classifier": "victim", "eval_task": "rt",
           "n_eval": 200, "options": options}
    if transfer is not None:
        run["transfer_detail"] = {"other": {"fooling_rate": transfer, "n_eval": 150, "baseline_fooling_rate": 0.06}}
    (root / name).mkdir(parents=True)
    (root / name / "attack.json").write_text(json.dumps(run))


def test_luat_is_paired_with_uat_seed_by_seed(attack_table, tmp_path):
    for s, (u, l2) in enumerate([(0.50, 0.40), (0.60, 0.45), (0.55, 0.50)]):
        _write(tmp_path, f"uat-s{s}", "uat", None, s, u, power_iters=10)  # uat ignores power_iters
        _write(tmp_path, f"luat2-s{s}", "luat", 2, s, l2)
    text = attack_table.table(attack_table.load(tmp_path))
    uat = next(line for line in text.splitlines() if line.startswith("| uat |"))
    luat = next(line for line in text.splitlines() if line.startswith("| luat, block 2 |"))
    assert "0.550 ± 0.050" in uat and "0.450 ± 0.050" in luat
    # differences -0.10, -0.15, -0.05: mean -0.10, sd 0.05, t(2) 4.303 * 0.05 / sqrt(3) = 0.124
    assert "-0.100 [-0.224, +0.024] (n = 3)" in luat


def test_runs_with_another_budget_are_refused(attack_table, tmp_path):
    _write(tmp_path, "luat2-s0", "luat", 2, 0, 0.4)
    _write(tmp_path, "luat2-s1", "luat", 2, 1, 0.4, power_iters=10)
    with pytest.raises(SystemExit, match="differ in victim, task or budget"):
        attack_table.load(tmp_path)


def test_transfer_rates_get_their_own_table_paired_the_same_way(attack_table, tmp_path):
    for s, (u, l6) in enumerate([(0.20, 0.30), (0.25, 0.30), (0.30, 0.45)]):
        _write(tmp_path, f"uat-s{s}", "uat", None, s, 0.5, transfer=u)
        _write(tmp_path, f"luat6-s{s}", "luat", 6, s, 0.4, transfer=l6)
    text = attack_table.table(attack_table.load(tmp_path))
    head, transfer = text.split("Transfer to other")
    assert "| uat | 0.500 ± 0.000 |" in head and "neutral trigger: fooling rate 0.060" in transfer
    assert "| uat | 0.250 ± 0.050 |" in transfer
    # differences +0.10, +0.05, +0.15: mean +0.10, sd 0.05, half-width 0.124
    assert "+0.100 [-0.024, +0.224] (n = 3)" in transfer
