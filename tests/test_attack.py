"""`steadylm attack` end to end on a tiny steadylm GPT fine-tuned here on a keyword task ("good" -> pos,
"bad" -> neg in random filler): the trigger it finds holds the opposing keyword and fools the
model far above the "the the the" baseline; attack.json's keys; bad input exits 2 with one line
and leaves no folder."""

from __future__ import annotations

import json

import pytest

from attack_helpers import finetuned_gpt, tiny_bert, write_task
from steadylm.cli import main

FAST = ["--iters", "2", "--batch", "32", "--candidates", "10", "--power-iters", "4",
        "--profile-examples", "8", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack")
    # Mean pooling over the trigger's own states gives HotFlip a usable first-order signal; a
    # [CLS]-pooled BERT this small saturates its attention and ranks the keyword last.
    clf = finetuned_gpt(root, seed=1, steps=300)
    return clf, write_task(root / "task.jsonl"), root


@pytest.mark.parametrize("method,extra", [("uat", []), ("luat", ["--layer", "1"])])
def test_targeted_trigger_holds_the_opposing_keyword(setup, method, extra, capsys):
    clf, task, root = setup
    out = root / f"{method}-targeted"
    argv = ["attack", str(clf), "--task", str(task), "--method", method, *extra,
            "--target-label", "neg", "--out", str(out), *FAST]  # fmt: skip
    assert main(argv) == 0
    r = json.loads((out / "attack.json").read_text())
    assert "bad" in r["trigger_text"].split(), r["trigger_text"]
    assert r["target_label"] == "neg"
    assert r["n_eval"] > 10  # correctly classified test inputs of label pos
    # Mean pooling over a causal model dilutes the text with any prefix, so "the the the" flips
    # some inputs too; the keyword flips nearly all.
    assert r["fooling_rate"] >= 0.8 and r["fooling_rate"] >= r["baseline_fooling_rate"] + 0.4
    assert r["baseline_trigger_text"] == "the the the"
    assert r["layer"] == (1 if method == "luat" else None)
    assert "fooling" in capsys.readouterr().out


def test_luat_auto_layer_untargeted_with_transfer(setup):
    clf, task, root = setup
    other = write_task(root / "other.jsonl", 400, seed=8)  # the layer and the score from it
    out = root / "luat-auto"
    argv = ["attack", str(clf), "--task", str(task), "--method", "luat", "--out", str(out),
            "--transfer", str(clf), "--select-examples", "48", "--select-task", str(other),
            "--eval-task", str(other), *FAST]  # fmt: skip
    assert main(argv) == 0
    r = json.loads((out / "attack.json").read_text())
    for key in ("method", "layer", "trigger_ids", "trigger_text", "fooling_rate", "n_eval",
                "baseline_fooling_rate", "transfer", "sensitivity", "options", "timings",
                "layer_selection", "clean_accuracy"):  # fmt: skip
        assert key in r, key
    assert r["method"] == "luat" and r["layer"] in (1, 2)
    assert (r["task"], r["eval_task"]) == (str(task), str(other))
    assert [row["layer"] for row in r["layer_selection"]] == [1, 2]
    assert [row["layer"] for row in r["sensitivity"]] == [1, 2]
    assert all(row["singular_value"] > 0 for row in r["sensitivity"])
    assert len(r["trigger_ids"]) == 3
    # Untargeted: one keyword flips one class, so about half the eligible inputs at most.
    assert r["fooling_rate"] > r["baseline_fooling_rate"] + 0.2
    # The same model through the text path: the trigger re-tokenises to the same ids.
    assert r["transfer"][str(clf)] == pytest.approx(r["fooling_rate"], abs=0.05)
    assert r["options"]["p"] == "inf" and r["options"]["q"] == 5.0
    assert (out / "sensitivity.png").stat().st_size > 0
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    for name in ("config.toml", "provenance.json"):
        assert (out / name).is_file()


def test_profile_only_on_a_pretrained_language_model(setup, capsys):
    _, task, root = setup
    lm = root / "gpt-base"  # the checkpoint the classifier was fine-tuned from
    assert main(["attack", str(lm), "--task", str(task), "--out", str(root / "x")]) == 2
    assert "--profile-only" in capsys.readouterr().err and not (root / "x").exists()
    out = root / "lm-profile"
    argv = ["attack", str(lm), "--task", str(task), "--profile-only", "--profile-examples", "8",
            "--power-iters", "4", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    r = json.loads((out / "profile.json").read_text())
    assert r["method"] == "profile" and [row["layer"] for row in r["sensitivity"]] == [1, 2]
    assert all(row["singular_value"] > 0 for row in r["sensitivity"])
    assert (out / "sensitivity.png").is_file() and not (out / "attack.json").exists()
    assert "(profile.json)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["--method", "fgsm"], "--method 'fgsm'"),
        (["--layer", "9"], "--layer 9"),
        (["--layer", "x"], "--layer 'x'"),
        (["--target-label", "maybe"], "--target-label 'maybe'"),
        (["--q", "1"], "--q"),
        (["--trigger-len", "0"], "--trigger-len"),
        (["--transfer", "nowhere"], "--transfer nowhere"),
        (["--task", "nope"], "unknown task 'nope'"),
        (["--profile-only", "--no-profile"], "--profile-only"),
        (["--eval-task", "nope.txt"], "unknown task 'nope.txt'"),
    ],
)
def test_bad_input_exits_2_with_one_line(setup, tmp_path, capsys, extra, expect):
    clf, task, _ = setup
    out = tmp_path / "run"
    argv = ["attack", str(clf), "--task", str(task), "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    assert not out.exists()


def test_not_a_classifier_exits_2(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["attack", str(tmp_path / "plain"), "--out", str(tmp_path / "o")]) == 2
    assert "not a fine-tuned classifier" in capsys.readouterr().err
    tiny_bert().bert.save_pretrained(tmp_path / "encoder")  # a bare encoder: no trained head
    assert main(["attack", str(tmp_path / "encoder"), "--out", str(tmp_path / "o")]) == 2
    assert "not a sequence classifier (architectures: BertModel)" in capsys.readouterr().err
    assert main(["attack", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_sweep_runs_attacks_over_seeds(setup, tmp_path):
    clf, task, _ = setup
    spec = tmp_path / "attack.toml"
    spec.write_text(
        '[sweep]\njob = "attack"\nseeds = [0, 1]\n[sweep.set]\n'
        f'"attack.classifier" = {json.dumps(str(clf))}\n"attack.task" = {json.dumps(str(task))}\n'
        '"attack.method" = "luat"\n"attack.layer" = 2\n"attack.iters" = 1\n"attack.batch" = 16\n'
        '"attack.candidates" = 5\n"attack.power_iters" = 2\n"attack.profile" = false\n'
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "sw" / "index.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in rows) == ["finished", "finished"]
    for seed in (0, 1):
        run = next((tmp_path / "sw").rglob(f"*s{seed}/attack.json"))
        r = json.loads(run.read_text())
        assert (r["layer"], r["options"]["seed"], r["sensitivity"]) == (2, seed, [])


def test_config_file_and_set_and_resume(setup, tmp_path, capsys):
    clf, task, _ = setup
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[attack]\nclassifier = {json.dumps(str(clf))}\nmethod = "uat"\niters = 1\n')
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text("[attack]\n")  # an attack stopped before it wrote anything
    argv = ["attack", "--config", str(cfg), "--set", "attack.batch=16", "--task", str(task),
            "--no-profile", "--candidates", "5", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 2  # the folder is not empty
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    r = json.loads((out / "attack.json").read_text())
    assert (r["method"], r["options"]["batch"], r["options"]["candidates"]) == ("uat", 16, 5)
    assert main([*argv, "--resume"]) == 2  # finished: nothing to start over
    assert "finished already" in capsys.readouterr().err


def test_layer_auto_reuses_single_layer_triggers_and_refuses_other_searches(setup, tmp_path, capsys):
    clf, task, _ = setup
    common = ["--task", str(task), "--method", "luat", "--no-profile", "--max-eval", "40",
              "--select-examples", "24", *FAST]  # fmt: skip
    single = {}
    for layer in (1, 2):
        single[layer] = tmp_path / f"luat{layer}"
        argv = ["attack", str(clf), *common, "--layer", str(layer), "--out", str(single[layer])]
        assert main(argv) == 0
    out = tmp_path / "auto"
    assert main(["attack", str(clf), *common, "--reuse", str(single[1]), "--out", str(out)]) == 0
    r = json.loads((out / "attack.json").read_text())
    one, two = r["layer_selection"]
    first = json.loads((single[1] / "attack.json").read_text())
    assert one["reused_from"] == str(single[1]) and one["trigger_ids"] == first["trigger_ids"]
    # Layer 2 was searched here, and the search is the one a single-layer attack runs.
    second = json.loads((single[2] / "attack.json").read_text())
    assert two["reused_from"] is None and two["trigger_ids"] == second["trigger_ids"]
    best = one if one["select_fooling_rate"] >= two["select_fooling_rate"] else two
    assert (r["layer"], r["trigger_ids"]) == (best["layer"], best["trigger_ids"])
    capsys.readouterr()
    bad = [
        (["--seed", "1"], "searched with seed = 0, this attack has 1"),
        (["--layer", "2"], "searched at layer 1, not 2"),
        (["--method", "uat"], "a luat attack, this is uat"),
        (["--candidates", "5"], "searched with candidates = 10"),
    ]
    for extra, expect in bad:
        argv = ["attack", str(clf), *common, "--reuse", str(single[1]), *extra,
                "--out", str(tmp_path / "bad")]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err
        assert not (tmp_path / "bad").exists()
    argv = ["attack", str(clf), *common, "--reuse", str(single[1]), str(single[1]),
            "--out", str(tmp_path / "bad")]  # fmt: skip
    assert main(argv) == 2 and "layer 1 given twice" in capsys.readouterr().err
    argv = ["attack", str(clf), *common, "--reuse", str(out), "--out", str(tmp_path / "bad")]
    assert main(argv) == 2 and "a --layer auto attack; give single-layer ones" in capsys.readouterr().err
    argv = ["attack", str(clf), *common, "--layer", "1", "--reuse", str(single[1]), str(single[2]),
            "--out", str(tmp_path / "bad")]  # fmt: skip
    assert main(argv) == 2 and "one folder for uat or --layer N" in capsys.readouterr().err


def test_single_searches_reuse_a_trigger_and_only_score_it(setup, tmp_path, capsys):
    """uat and --layer N read one earlier search back: the trigger, its history and the fooling
    rate are the search's own, and the options that only score it (max-eval, p for uat) may
    differ; the search's options may not."""
    clf, task, _ = setup
    common = ["--task", str(task), "--no-profile", *FAST]
    for method in (["--method", "uat"], ["--method", "luat", "--layer", "2"]):
        first, again = tmp_path / f"{method[1]}-first", tmp_path / f"{method[1]}-again"
        argv = ["attack", str(clf), *common, *method, "--max-eval", "40"]
        assert main([*argv, "--out", str(first)]) == 0
        scoring_only = ["--max-eval", "60"] + (["--p", "3"] if method[1] == "uat" else [])
        argv = ["attack", str(clf), *common, *method, *scoring_only, "--reuse", str(first),
                "--out", str(again)]  # fmt: skip
        assert main(argv) == 0
        a, b = (json.loads((d / "attack.json").read_text()) for d in (first, again))
        assert b["reused_from"] == str(first) and a["reused_from"] is None
        assert (b["trigger_ids"], b["history"], b["layer"]) == (a["trigger_ids"], a["history"], a["layer"])
        assert b["n_eval"] >= a["n_eval"]  # scored on more of the test split
        capsys.readouterr()
        argv = ["attack", str(clf), *common, *method, "--iters", "3", "--reuse", str(first),
                "--out", str(tmp_path / "bad")]  # fmt: skip
        assert main(argv) == 2 and "searched with iters" in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
