"""Crash safety: kill at each named fault point, resume, and continue the uninterrupted run's losses."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import run_tree, tiny_config, tiny_overrides, write_corpus
from steadylm.errors import CheckpointError
from steadylm.rundir import latest_checkpoint, step_dir_name, verify_checkpoint
from steadylm.train import checkpoint as ckpt_io
from steadylm.train.faults import EXIT_CODE
from steadylm.train.metrics import read_metrics
from steadylm.train.trainer import Trainer

pytestmark = pytest.mark.slow
STEPS = 8


def _cli(args, env, **kw):
    return run_tree([sys.executable, "-m", "steadylm", *args], env=env, timeout=300, **kw)


def _losses(run):
    return [(r["step"], r["loss"], r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl") if "event" not in r]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    corpus = write_corpus(root / "corpus", n_docs=6, words_per_doc=60)
    env = {**os.environ, "STEADYLM_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    over = tiny_overrides(corpus, **{"model.dropout": 0.1, "train.max_steps": STEPS, "train.checkpoint_every": 3})
    sets = [x for o in over for x in ("--set", o)]
    whole = _cli(["train", *sets, "--out", str(root / "whole"), "--no-progress"], env)
    assert whole.returncode == 0, whole.stderr
    return root, env, sets, _losses(root / "whole")


@pytest.mark.parametrize(
    "fault, expected_latest",
    [
        ("mid-step@4", "step_000003"),                 # dies inside step 4: the last checkpoint is step 3
        ("checkpoint-before-rename@6", "step_000003"),  # the half-made step 6 never becomes visible
        ("checkpoint-after-rename@6", "step_000006"),   # renamed, then killed: step 6 is complete
        ("metrics-flush@3", "step_000003"),             # half a metrics line on disk
    ],
)
def test_kill_at_fault_point_then_resume_exactly(setup, fault, expected_latest):
    root, env, sets, expected = setup
    run = root / fault.replace("@", "_")
    crashed = _cli(["train", *sets, "--out", str(run), "--no-progress"], {**env, "STEADYLM_FAULT": fault})
    assert crashed.returncode == EXIT_CODE, crashed.stderr
    latest = latest_checkpoint(run)
    assert latest.name == expected_latest and verify_checkpoint(latest) is None
    assert json.loads((run / "status.json").read_text())["status"] == "running"  # killed, not finished
    resumed = _cli(["train", "--out", str(run), "--resume", "--no-progress"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert _losses(run) == expected
    assert not list((run / "checkpoints").glob(".tmp_*"))
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


def test_sigterm_saves_a_checkpoint_and_resume_is_exact(setup):
    root, env, sets, _ = setup
    long = [*sets, "--set", "train.max_steps=400", "--set", "train.checkpoint_every=1000",
            "--set", "train.eval_every=0"]
    whole = _cli(["train", *long, "--out", str(root / "long_whole"), "--no-progress"], env)
    assert whole.returncode == 0
    run = root / "long_split"
    proc = subprocess.Popen([sys.executable, "-m", "steadylm", "train", *long, "--out", str(run), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "stopped" and 0 < status["step"] < 400
    assert latest_checkpoint(run).name == step_dir_name(status["step"])
    resumed = _cli(["train", "--out", str(run), "--resume", "--no-progress"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert _losses(run) == _losses(root / "long_whole")


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny_config(write_corpus(tmp_path / "corpus", n_docs=6, words_per_doc=60))
    real_save = ckpt_io.save_file

    def save_or_fill_disk(sd, path, metadata=None):
        if "step_000008" in path:
            raise OSError(28, "No space left on device")
        return real_save(sd, path, metadata=metadata)

    monkeypatch.setattr(ckpt_io, "save_file", save_or_fill_disk)
    with pytest.raises(CheckpointError, match="could not write checkpoint step_000008 .*No space left on device.*"
                                              "previous checkpoint step_000004 is intact"):
        Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert latest_checkpoint(tmp_path / "run").name == "step_000004"
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp_*"))
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"
