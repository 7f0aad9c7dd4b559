"""`steadylm sweep`: spec parsing and run names, up-front validation, index.jsonl, resume after a
kill without redoing finished runs, and failed runs recorded while the sweep goes on."""

import json
import os
import sys

import pytest

from helpers import run_tree, tiny_overrides, write_corpus
from steadylm.cli import main
from steadylm.config import parse_override
from steadylm.experiments.spec import parse_spec, short_float, toml_value
from steadylm.experiments.sweep import read_index
from steadylm.train.metrics import read_metrics


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus")


def write_spec(path, corpus, body, seeds=(1, 2), drop=(), **extra):
    """A spec over the tests' tiny model: its settings (less `drop`) go to [sweep.set], `body` adds tables."""
    pairs = (o.split("=", 1) for o in tiny_overrides(corpus, **extra))
    fixed = "\n".join(f'"{k}" = {v}' for k, v in pairs if k not in drop)
    path.write_text(f'[sweep]\nbase = "tiny-cpu"\nseeds = {list(seeds)}\n\n[sweep.set]\n{fixed}\n\n{body}\n')
    return path


def test_spec_expands_variants_grid_and_seeds_into_named_runs(tmp_path, corpus):
    spec = write_spec(tmp_path / "s.toml", corpus, """
[sweep.grid]
model.n_layer = [2, 3]
"train.lr" = [1e-3, 3e-3]
"train.warmup_steps" = [1]
[sweep.variants.base]
[sweep.variants.mlra-vp]
model.attention = "mlra"
"model.mlra_init" = "variance_preserving"
""", drop=("model.n_layer", "train.lr", "train.warmup_steps"))
    s = parse_spec(spec)
    plans = s.runs()
    assert len(plans) == 2 * 2 * 2 * 2
    assert [p.name for p in plans[:3]] == ["base-n_layer2-lr1e-3-s1", "base-n_layer2-lr1e-3-s2",
                                           "base-n_layer2-lr3e-3-s1"]
    last = plans[-1]
    assert last.name == "mlra-vp-n_layer3-lr3e-3-s2"  # a one-value grid key does not vary, so it is not in names
    assert last.variant == "mlra-vp" and last.seed == 2
    assert last.grid == {"model.n_layer": 3, "train.lr": 3e-3, "train.warmup_steps": 1}
    over = last.overrides
    assert over["model.attention"] == "mlra" and over["model.mlra_init"] == "variance_preserving"
    assert over["train.seed"] == 2 and over["train.lr"] == 3e-3 and over["data.tokenizer"] == "bpe:300"
    cfgs = dict((p.name, c) for p, c in s.resolve())
    c = cfgs["mlra-vp-n_layer3-lr3e-3-s2"]
    assert ((c.model.n_layer, c.train.lr, c.train.seed, c.model.attention, c.train.warmup_steps)
            == (3, 3e-3, 2, "mlra", 1))
    assert c.train.max_steps == 8  # from [sweep.set]
    assert cfgs["base-n_layer2-lr1e-3-s1"].model.attention == "mha"


def test_seeds_first_order_keeps_recipe_order_within_each_seed(tmp_path, corpus):
    spec = write_spec(tmp_path / "s.toml", corpus, """
[sweep.grid]
model.n_layer = [2, 3]
[sweep.variants.base]
[sweep.variants.mlra]
model.attention = "mlra"
""", drop=("model.n_layer",))
    spec.write_text(spec.read_text().replace("seeds = [1, 2]", 'seeds = [1, 2]\norder = "seeds-first"'))
    names = [p.name for p in parse_spec(spec).runs()]
    assert names == ["base-n_layer2-s1", "base-n_layer3-s1", "mlra-n_layer2-s1", "mlra-n_layer3-s1",
                     "base-n_layer2-s2", "base-n_layer3-s2", "mlra-n_layer2-s2", "mlra-n_layer3-s2"]


@pytest.mark.parametrize("x, text", [(3e-3, "3e-3"), (0.5, "0.5"), (1e-4, "1e-4"), (2.5e-3, "2.5e-3"), (2.0, "2"),
                                     (1234.5, "1234.5"), (6e-4, "6e-4")])
def test_float_names(x, text):
    assert short_float(x) == text


@pytest.mark.parametrize("value", [3, 3e-3, 1e-5, True, "bpe:300", 'a "quoted" \\ path', ["x", "y"], float("inf")])
def test_override_values_read_back_unchanged(value):
    assert parse_override(f"data.path={toml_value(value)}")[2] == value


BAD_SPECS = [
    ('[sweep.grid]\n"model.n_layr" = [2, 3]', "model.n_layr: unknown key", "n_layer"),
    ('[sweep.variants.x]\n"modle.attention" = "mlra"', "unknown section 'modle'", "model"),
    ('[sweep.variants.x]\n"model.attention" = "mlra"\n[sweep.variants.y]\n"model.mlra_rank" = 4',
     "run y-s1: model.mlra_rank=4 only applies", "mlra"),
    ('[sweep.grid]\n"train.weight_decay" = [0.1, -1.0]',
     "run weight_decay-1-s1: train.weight_decay: must be >= 0", "-1.0"),
    ('[sweep.grid]\n"train.lr" = [1e-3, 3e-3]', "train.lr is set in both [sweep.set] and [sweep.grid]", "one place"),
    ('[sweep.grid]\n"train.seed" = [1, 2]', "train.seed is set in both", "seeds"),
    ('[sweep.grid]\n"train.beta1" = 0.9', "expected a non-empty list", "train.beta1"),
    ('[sweep.variants."a b"]', "a variant name is", "a b"),
    ('[model]\nn_layer = 2', "holds one [sweep] table", "[model]"),
]


@pytest.mark.parametrize("body, message, mention", BAD_SPECS)
def test_bad_spec_fails_with_one_line_before_any_training(tmp_path, corpus, capsys, body, message, mention):
    spec = write_spec(tmp_path / "s.toml", corpus, body)
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and mention in err, err
    assert not out.exists()


def test_unknown_sweep_key_and_missing_base(tmp_path, capsys):
    (tmp_path / "a.toml").write_text('[sweep]\nbase = "tiny-cpu"\nseed = [1]\n')
    (tmp_path / "b.toml").write_text('[sweep]\nseeds = [1]\n')
    (tmp_path / "c.toml").write_text('[sweep]\nbase = "tiny-cpuu"\n')
    (tmp_path / "d.toml").write_text('[sweep]\nbase = "tiny-cpu"\norder = "random"\n')
    assert main(["sweep", str(tmp_path / "a.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "[sweep] seed: unknown key" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "b.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "base: required" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'tiny-cpu'" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "d.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "[sweep] order: 'random' is not one of recipes-first, seeds-first" in capsys.readouterr().err


VARIANTS = '[sweep.variants.base]\n[sweep.variants.mlra]\n"model.attention" = "mlra"\n'


def test_sweep_trains_every_run_and_writes_the_index(tmp_path, corpus, capsys):
    spec = write_spec(tmp_path / "s.toml", corpus, VARIANTS)
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "mlra-s2" in listed and "4 runs, 4 to train" in listed and not out.exists()

    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    index = read_index(out)
    assert [r["name"] for r in index] == ["base-s1", "base-s2", "mlra-s1", "mlra-s2"]
    for rec in index:
        assert rec["status"] == "finished" and rec["step"] == 8
        run = out / rec["dir"]
        assert json.loads((run / "status.json").read_text())["status"] == "finished"
        assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "event" not in r] == list(range(8))
        cfg = (run / "config.toml").read_text()
        assert f"seed = {rec['seed']}" in cfg
        assert ('attention = "mlra"' in cfg) == (rec["variant"] == "mlra")
        assert rec["overrides"]["train.seed"] == rec["seed"]
    assert (out / "spec.toml").read_text() == spec.read_text()

    # Done is done: a second run trains nothing, and keeps what the index recorded of each run.
    before = {r["name"]: (out / r["dir"] / "metrics.jsonl").stat().st_mtime_ns for r in index}
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    assert {r["name"]: (out / r["dir"] / "metrics.jsonl").stat().st_mtime_ns for r in read_index(out)} == before
    assert read_index(out) == index and all(r["seconds"] > 0 for r in index)

    # A spec that only adds runs continues the sweep: the new seed trains, the rest stay as done.
    spec.write_text(spec.read_text().replace("seeds = [1, 2]", "seeds = [1, 2, 3]"))
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    grown = {r["name"]: r for r in read_index(out)}
    assert set(grown) == set(before) | {"base-s3", "mlra-s3"}
    assert all(grown[n]["status"] == "finished" for n in grown)
    assert {n: (out / grown[n]["dir"] / "metrics.jsonl").stat().st_mtime_ns for n in before} == before
    assert (out / "spec.toml").read_text() == spec.read_text()

    # A spec that would change or drop a run already there may not reuse the folder.
    capsys.readouterr()
    changed = tmp_path / "changed.toml"
    mlra = '"model.attention" = "mlra"'
    changed.write_text(spec.read_text().replace(mlra, mlra + '\n"model.mlra_rank" = 4'))
    assert main(["sweep", str(changed), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different spec" in err and "run mlra-s1 would train with other overrides" in err
    changed.write_text(spec.read_text().replace("seeds = [1, 2, 3]", "seeds = [1, 2]"))
    assert main(["sweep", str(changed), "--out", str(out), "--no-progress"]) == 2
    assert "run base-s3 is no longer in the spec" in capsys.readouterr().err


def _sweep_process(spec, out, fault=None, jobs=1):
    env = {k: v for k, v in os.environ.items() if k not in ("STEADYLM_FAULT", "OMP_NUM_THREADS")}
    if jobs == 1:
        env["OMP_NUM_THREADS"] = "1"  # fixed threads; with --jobs the sweep splits them itself
    if fault:
        env["STEADYLM_FAULT"] = fault
    cmd = [sys.executable, "-m", "steadylm", "sweep", str(spec), "--out", str(out), "--no-progress",
           "--jobs", str(jobs)]
    return run_tree(cmd, env=env, timeout=300)


@pytest.mark.slow
def test_killed_sweep_reruns_without_redoing_finished_runs(tmp_path, corpus):
    # The fault kills the process at step 3 of the first run that reaches it: the 3-step runs
    # finish first, then the sweep dies inside long-s1 after its step-2 checkpoint.
    body = '[sweep.variants.short]\n"train.max_steps" = 3\n[sweep.variants.long]\n"train.max_steps" = 8\n'
    spec = write_spec(tmp_path / "s.toml", corpus, body, drop=("train.max_steps",), **{"train.checkpoint_every": 2})
    out = tmp_path / "sweep"
    killed = _sweep_process(spec, out, fault="mid-step@3")
    assert killed.returncode == 86, killed.stderr
    status = {r["name"]: r["status"] for r in read_index(out)}
    assert status == {"short-s1": "finished", "short-s2": "finished", "long-s1": "running", "long-s2": "pending"}
    finished = {n: (out / "runs" / n / "metrics.jsonl") for n in ("short-s1", "short-s2")}
    before = {n: (p.stat().st_mtime_ns, p.read_bytes()) for n, p in finished.items()}
    ckpt = out / "runs" / "long-s1" / "checkpoints" / "step_000002"
    ckpt_time = ckpt.stat().st_mtime_ns

    again = _sweep_process(spec, out)
    assert again.returncode == 0, again.stderr
    assert {r["name"]: r["status"] for r in read_index(out)} == dict.fromkeys(status, "finished")
    assert {n: (p.stat().st_mtime_ns, p.read_bytes()) for n, p in finished.items()} == before
    assert ckpt.stat().st_mtime_ns == ckpt_time  # resumed from it, not retrained
    steps = [r["step"] for r in read_metrics(out / "runs" / "long-s1" / "metrics.jsonl") if "event" not in r]
    assert steps == list(range(8))


@pytest.mark.slow
def test_failed_run_is_recorded_and_the_parallel_sweep_goes_on(tmp_path, corpus):
    body = """
[sweep.variants.base]
"model.block_size" = 16
[sweep.variants.mlra]
"model.block_size" = 16
"model.attention" = "mlra"
[sweep.variants.toolong]  # a valid config that fails when it meets the data
"model.block_size" = 100000
"""
    spec = write_spec(tmp_path / "s.toml", corpus, body, seeds=(1,), drop=("model.block_size",))
    out = tmp_path / "sweep"
    done = _sweep_process(spec, out, jobs=2)
    assert done.returncode == 1, done.stderr
    index = {r["name"]: r for r in read_index(out)}
    assert index["toolong-s1"]["status"] == "failed" and "block_size+1 = 100001" in index["toolong-s1"]["error"]
    assert index["base-s1"]["status"] == index["mlra-s1"]["status"] == "finished"
    assert "failed  toolong-s1" in done.stdout
    # Two processes on this machine's cores: each trained with its share of the threads.
    cores = len(os.sched_getaffinity(0))
    prov = json.loads((out / "runs" / "base-s1" / "provenance.json").read_text())
    assert prov["threads"] == max(1, cores // 2)
    assert "block_size+1" in (out / "logs" / "toolong-s1.log").read_text()


def test_failed_run_in_process_is_recorded_and_retried_on_rerun(tmp_path, corpus, capsys):
    body = (f'[sweep.variants.base]\n"data.path" = "{corpus}"\n'
            f'[sweep.variants.nodata]\n"data.path" = "{tmp_path / "later"}"\n')
    spec = write_spec(tmp_path / "s.toml", corpus, body, seeds=(1,), drop=("data.path",))
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 1
    index = {r["name"]: r for r in read_index(out)}
    assert index["base-s1"]["status"] == "finished"
    assert index["nodata-s1"]["status"] == "failed" and "later" in index["nodata-s1"]["error"]
    write_corpus(tmp_path / "later")  # the data appears: the failed run is tried again
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    assert {r["status"] for r in read_index(out)} == {"finished"}
