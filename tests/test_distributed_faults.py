"""A checkpoint write that fails on one rank stops every rank with that rank's error (2 gloo processes)."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from helpers import run_tree, tiny_overrides, write_corpus

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_write_failure_on_one_rank_stops_all_ranks(tmp_path, parallel):
    corpus = write_corpus(tmp_path / "corpus", n_docs=8, words_per_doc=200)
    env = {**os.environ, "STEADYLM_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "STEADYLM_FAULT": "checkpoint-write@3", "STEADYLM_FAULT_RANK": "1"}
    over = tiny_overrides(corpus, **{"train.max_steps": 6, "train.checkpoint_every": 3,
                                     "train.eval_every": 0, "train.parallel": parallel})
    sets = [x for o in over for x in ("--set", o)]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "steadylm", "train", *sets, "--out", str(run), "--no-progress"]
    try:
        proc = run_tree(cmd, env=env, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks hung after one of them failed to write its checkpoint")
    assert proc.returncode != 0
    message = "could not write checkpoint step_000003 (rank 1: injected write failure (checkpoint-write@3))"
    # Both ranks stop with the same one-line error (the CLI's, no traceback of theirs; torchrun
    # then reports the failed children in its own words), not a timeout.
    assert proc.stderr.count(message) == 2, proc.stderr[-3000:]
    assert not re.search(r"\[rank\d\]:\s*Traceback", proc.stderr)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "rank 1: injected write failure" in status["error"]
    assert not list((run / "checkpoints").glob(".tmp_*"))  # the half-written folder is gone
    assert not list((run / "checkpoints").glob("step_*"))
