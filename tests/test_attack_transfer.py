"""experiments/attack_transfer.py and attack_transfer_table.py: every trigger scored once per
classifier gives the fooling rates `steadylm attack --transfer` gives, and the tables pair LUAT
with UAT by seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attack_helpers import finetuned_gpt, write_task
from steadylm.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
FAST = ["--iters", "1", "--batch", "32", "--candidates", "5", "--power-iters", "2",
        "--no-profile", "--no-progress", "--max-eval", "60"]  # fmt: skip


@pytest.fixture(scope="module")
def scripts():
    import sys

    sys.path.insert(0, str(EXPERIMENTS))
    import attack_transfer
    import attack_transfer_table

    yield attack_transfer, attack_transfer_table
    sys.path.remove(str(EXPERIMENTS))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two tiny GPT classifiers of different pre-trained bases; uat and luat at block 1 on the
    first, seeds 0 and 1, each also scored on the second by --transfer."""
    root = tmp_path_factory.mktemp("transfer")
    a = finetuned_gpt(root / "a", seed=1, steps=120)
    b = finetuned_gpt(root / "b", seed=2, steps=120)
    task = write_task(root / "task.jsonl")
    folders = []
    for seed in (0, 1):
        for name, method in (("uat", ["--method", "uat"]), ("luat1", ["--method", "luat", "--layer", "1"])):
            out = root / "study" / "a" / f"{name}-s{seed}"
            argv = ["attack", str(a), "--task", str(task), *method, "--seed", str(seed),
                    "--transfer", str(b), "--out", str(out), *FAST]  # fmt: skip
            assert main(argv) == 0
            folders.append(out)
    return root, a, b, folders


def test_scores_match_the_attack_jobs_own_transfer(scripts, study):
    attack_transfer, _ = scripts
    root, a, b, folders = study
    out = root / "study" / "transfer.json"
    argv = [*map(str, folders), "--victim", f"a={a}", "--victim", f"b={b}", "--out", str(out)]
    assert attack_transfer.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["victims"]["a"]["base"] != data["victims"]["b"]["base"]
    for entry, folder in zip(data["attacks"], folders):
        run = json.loads((folder / "attack.json").read_text())
        assert entry["source"] == "a" and "a" not in entry["scores"]  # never scored on itself
        assert entry["own_fooling_rate"] == run["fooling_rate"]
        assert entry["scores"]["b"] == pytest.approx(run["transfer"][str(b)])
        assert data["victims"]["b"]["baseline_fooling_rate"] == pytest.approx(
            run["transfer_detail"][str(b)]["baseline_fooling_rate"]
        )
    # Run again into the same file: every trigger text is read back, none scored again.
    assert attack_transfer.main(argv) == 0
    again = json.loads(out.read_text())
    assert again["victims"]["b"]["scored_now"] == 0 < data["victims"]["b"]["scored_now"]
    assert [e["scores"] for e in again["attacks"]] == [e["scores"] for e in data["attacks"]]


def test_table_pairs_luat_with_uat_by_seed(scripts, study):
    _, table = scripts
    root, _, _, folders = study
    text = table.render(root / "study")
    data = json.loads((root / "study" / "transfer.json").read_text())
    by = {(e["method"], e["seed"]): e for e in data["attacks"]}
    diffs = [by["luat", s]["scores"]["b"] - by["uat", s]["scores"]["b"] for s in (0, 1)]
    row = next(line for line in text.splitlines() if line.startswith("| luat, block 1 |"))
    assert f"{sum(diffs) / 2:+.3f}" in row
    assert "| a (own) | a → b |" in text


def test_attacks_scored_differently_are_refused(scripts, study, tmp_path):
    attack_transfer, _ = scripts
    root, a, b, folders = study
    other = tmp_path / "other"
    other.mkdir()
    run = json.loads((folders[0] / "attack.json").read_text())
    run["options"]["max_eval"] = 0
    (other / "attack.json").write_text(json.dumps(run))
    with pytest.raises(SystemExit, match="scored differently"):
        attack_transfer.main([str(folders[0]), str(other), "--victim", f"a={a}", "--out", str(tmp_path / "t.json")])


def test_rows_follow_block_number_at_any_depth(scripts):
    """A 30-block victim (SmolLM2's depth) keeps every block's row, in block order."""
    _, table = scripts
    victims = {n: {"base": n, "clean_accuracy": 0.9, "n_eval": 10, "baseline_fooling_rate": 0.0}
               for n in ("a", "b")}  # fmt: skip
    attacks = [{"source": "a", "method": m, "layer": layer, "selected": False, "seed": s,
                "own_fooling_rate": 0.5, "scores": {"b": 0.1 * s + (layer or 0) / 100}}
               for s in (0, 1) for m, layer in (("uat", None), ("luat", 30), ("luat", 2))]  # fmt: skip
    data = {"scoring": {"max_eval": 10, "eval_task": "t"}, "victims": victims, "attacks": attacks}
    matrix_rows = [line.split("|")[2].strip() for line in table.matrix(data)[2:]]
    assert matrix_rows == ["uat", "luat, block 2", "luat, block 30"]
    gap_rows = [line.split("|")[1].strip() for line in table.gaps(data)[2:]]
    assert gap_rows == ["luat, block 2", "luat, block 30"]
