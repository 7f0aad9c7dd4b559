"""experiments/geometry_over_seeds.py: seeds pooled per step and hidden state, only shared steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture()
def pooling(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import geometry_over_seeds

    return geometry_over_seeds


def _profile(run: str, steps: list[int], shift: float) -> dict:
    def layer(i: int, step: int) -> dict:
        return {
            "layer": i,
            "anisotropy": 0.1 * i + shift,
            "intrinsic_dim": 10.0 - i + step / 100,
            "nn_same_token": 0.0,
            "linearity_no_residual": None if i == 0 else 0.9,
        }

    return {
        "run": run,
        "checkpoints": [{"step": s, "layers": [layer(i, s) for i in range(3)]} for s in steps],
    }


def test_seeds_are_pooled_on_the_steps_they_share(pooling, tmp_path):
    a, b = _profile("s1", [1, 10, 100], 0.0), _profile("s2", [1, 10], 0.02)
    pooled = pooling.pool([a, b])
    assert [c["step"] for c in pooled["checkpoints"]] == [1, 10]
    aniso = pooled["checkpoints"][1]["layers"][2]["anisotropy"]
    assert aniso["mean"] == pytest.approx(0.21) and aniso["n"] == 2
    assert aniso["sd"] == pytest.approx(0.02 / 2**0.5)
    missing = pooled["checkpoints"][0]["layers"][0]["linearity_no_residual"]
    assert missing == {"mean": None, "sd": None, "n": 0}
    # the command line writes the table, the JSON and the figure
    files = []
    for name, p in (("a", a), ("b", b)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(p))
    assert pooling.main([str(tmp_path / "out"), f"pre_ln={files[0]},{files[1]}"]) == 0
    table = (tmp_path / "out" / "over_seeds.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| 10 |"))
    assert "## pre_ln (2 seeds: s1, s2)" in table
    assert row.split(" | ")[1:4] == ["0.01 ± 0.0141", "0.11 ± 0.0141", "0.21 ± 0.0141"]
    assert (tmp_path / "out" / "over_seeds.png").stat().st_size > 0


def test_profiles_without_a_shared_step_are_refused(pooling):
    with pytest.raises(SystemExit, match="share no checkpoint step"):
        pooling.pool([_profile("s1", [1], 0.0), _profile("s2", [2], 0.0)])
