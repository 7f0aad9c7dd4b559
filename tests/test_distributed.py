"""Two gloo processes under torchrun train like one process with the same global batch (DDP, FSDP2)."""

import json
import os
import socket
import sys

import pytest

from helpers import run_tree, tiny_overrides, write_corpus
from steadylm.train.metrics import read_metrics

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out, overrides, nproc, env):
    sets = [x for o in overrides for x in ("--set", o)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "steadylm"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "steadylm"]
    proc = run_tree([*cmd, "train", *sets, "--out", str(out), "--no-progress"],
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [r for r in read_metrics(out / "metrics.jsonl") if "event" not in r]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    corpus = write_corpus(root / "corpus", n_docs=8, words_per_doc=200)
    env = {**os.environ, "STEADYLM_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    over = tiny_overrides(corpus, **{"train.max_steps": 6, "train.checkpoint_every": 3, "train.eval_every": 3})
    single = _train(root / "single", over, 1, env)
    return root, env, over, single


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(setup, parallel):
    root, env, over, single = setup
    # micro-batch 4 and batch 8: one process accumulates 2 micro-batches, two processes 1 each.
    double = _train(root / parallel, [*over, f'train.parallel="{parallel}"'], 2, env)
    assert [r["step"] for r in double] == [r["step"] for r in single]
    for a, b in zip(single, double):
        for key in ("loss", "grad_norm", "tev_mean", "tev_std"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (parallel, a["step"], key)
        if "val_loss" in a:
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    prov = json.loads((root / parallel / "provenance.json").read_text())
    assert prov["world_size"] == 2
    ckpt = root / parallel / "checkpoints" / "step_000006"
    assert json.loads((ckpt / "manifest.json").read_text())["world_size"] == 2
    assert {p.name for p in (ckpt / "train_state").glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}


def test_resume_on_a_different_world_size(setup):
    """A two-process DDP run stopped at step 3 continues in one process from its checkpoint."""
    root, env, over, single = setup
    out = root / "reshard"
    sets = [x for o in over for x in ("--set", o)]
    port = str(_free_port())
    first = run_tree([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_addr", "127.0.0.1", "--master_port", port, "-m", "steadylm", "train", *sets,
                            "--out", str(out), "--no-progress", "--stop-at", "3"],
                           env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_tree([sys.executable, "-m", "steadylm", "train", "--out", str(out), "--resume", "--no-progress"],
                            env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "world size 2, now 1" in second.stderr
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "event" not in r]
    assert [r["step"] for r in rows] == list(range(6))
    # No dropout here, so even the re-seeded continuation follows the single-process run.
    for a, b in zip(single, rows):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_tt_embedding_under_ddp_matches_one_process(setup):
    """The TT cores are replicated like any parameter; FSDP2 refuses a TT embedding by name."""
    root, env, over, _ = setup
    tt = [*over, 'model.embedding="tt"', "model.tt_rank=4"]
    single = _train(root / "tt_single", tt, 1, env)
    double = _train(root / "tt_ddp", tt, 2, env)
    for a, b in zip(single, double, strict=True):
        for key in ("loss", "grad_norm", "tev_mean", "tev_std"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    sets = [x for o in [*tt, 'train.parallel="fsdp"'] for x in ("--set", o)]
    proc = run_tree([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "steadylm",
                           "train", *sets, "--out", str(root / "tt_fsdp"), "--no-progress"],
                          env=env, timeout=300)
    assert proc.returncode != 0 and "does not support model.embedding='tt'" in proc.stderr
    assert not (root / "tt_fsdp" / "config.toml").exists()
