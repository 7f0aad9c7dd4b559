"""`steadylm sweep --launcher submitit`: resources from [sweep.launcher] and flags, the torchrun
command of a multi-process run, and a sweep through submitit's local executor that records job
ids, keeps finished runs and resumes an interrupted one from its checkpoint."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import run_tree, tiny_overrides, write_corpus
from steadylm.cli import main
from steadylm.config import ConfigError
from steadylm.experiments.spec import parse_spec
from steadylm.experiments.submit import TrainJob, launcher_config
from steadylm.experiments.sweep import read_index
from steadylm.train.metrics import read_metrics

pytest.importorskip("submitit")


def write_spec(path, corpus, launcher, body="", seeds=(1,), **extra):
    over = tiny_overrides(corpus, **extra)
    pairs = (o.split("=", 1) for o in over)
    fixed = "\n".join(f'"{k}" = {v}' for k, v in pairs if f'"{k}"' not in body)  # variants set their own
    path.write_text(f'[sweep]\nbase = "tiny-cpu"\nseeds = {list(seeds)}\n\n[sweep.set]\n{fixed}\n\n'
                    f"{body}\n[sweep.launcher]\n{launcher}\n")
    return path


def test_launcher_table_and_flags():
    cfg = launcher_config({"partition": "gpu", "gpus": 4, "time": 120}, {"time": 30, "nodes": 2})
    assert (cfg.partition, cfg.gpus, cfg.time, cfg.nodes, cfg.procs_per_node) == ("gpu", 4, 30, 2, 4)
    assert launcher_config({}).procs_per_node == 1
    with pytest.raises(ConfigError, match=r"^\[sweep.launcher\] gpu: unknown key; valid keys: .*did you mean 'gpus'"):
        launcher_config({"gpu": 2})
    with pytest.raises(ConfigError, match=r"^--time: must be >= 1, got 0$"):
        launcher_config({}, {"time": 0})
    with pytest.raises(ConfigError, match=r"^\[sweep.launcher\] cluster: 'slrum' is not one of .*did you mean 'slurm'"):
        launcher_config({"cluster": "slrum"})
    with pytest.raises(ConfigError, match=r"^\[sweep.launcher\] time: expected int, got str"):
        launcher_config({"time": "1:00:00"})


def test_multi_process_runs_go_under_torchrun():
    args = ["train", "--out", "R", "--no-progress"]
    assert TrainJob(args).command()[1:] == ["-m", "steadylm", *args]
    one_node = TrainJob(args, nodes=1, procs_per_node=4).command()
    assert one_node[1:6] == ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--standalone"]
    assert one_node[-len(args) - 2:] == ["-m", "steadylm", *args]
    # Each node computes the same rendezvous from the job: node 0's host and a port from the job id.
    nodes = [TrainJob(args, nodes=2, procs_per_node=8).command(n, "gpu-07", "4242") for n in (0, 1)]
    for n, cmd in enumerate(nodes):
        flags = dict(zip(cmd[5:13:2], cmd[6:13:2]))
        assert flags == {"--nnodes": "2", "--node_rank": str(n), "--master_addr": "gpu-07", "--master_port": "24242"}


def test_bad_launcher_use_is_one_line(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", n_docs=2, words_per_doc=50)
    spec = write_spec(tmp_path / "s.toml", corpus, "tim = 5")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--launcher", "submitit"]) == 2
    assert "s.toml: [sweep.launcher] tim: unknown key" in capsys.readouterr().err
    spec = write_spec(tmp_path / "s.toml", corpus, "time = 5")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--partition", "gpu"]) == 2
    assert "--partition: only applies to --launcher submitit" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--launcher", "submitit", "--nodes", "2",
                 "--cluster", "local"]) == 2
    assert "--nodes: the local cluster is this one machine" in capsys.readouterr().err
    assert parse_spec(spec).launcher == {"time": 5}
    if shutil.which("sbatch") is None:  # no cluster here: say so, and write nothing
        assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--launcher", "submitit"]) == 2
        assert "no SLURM cluster found (sbatch is not on PATH)" in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


def _sweep(spec, out, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "STEADYLM_FAULT"}
    env["OMP_NUM_THREADS"] = "1"
    if fault:
        env["STEADYLM_FAULT"] = fault
    cmd = [sys.executable, "-m", "steadylm", "sweep", str(spec), "--out", str(out), "--no-progress",
           "--launcher", "submitit"]
    return run_tree(cmd, env=env, timeout=300)


@pytest.mark.slow
def test_submitit_sweep_records_jobs_and_resumes(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_docs=6, words_per_doc=200)
    body = '[sweep.variants.short]\n"train.max_steps" = 3\n[sweep.variants.long]\n"train.max_steps" = 4\n'
    spec = write_spec(tmp_path / "s.toml", corpus, 'cluster = "local"\ntime = 10', body,
                      **{"train.checkpoint_every": 2, "train.eval_every": 0})
    out = tmp_path / "sweep"
    # Both jobs start at once; the fault kills the long run's trainer at step 3, after its step-2 checkpoint.
    first = _sweep(spec, out, fault="mid-step@3")
    assert first.returncode == 1, first.stderr
    index = {r["name"]: r for r in read_index(out)}
    assert index["short-s1"]["status"] == "finished", index["short-s1"]
    assert index["long-s1"]["status"] == "failed" and "exit code 86" in index["long-s1"]["error"]
    assert all(r["job_id"] and (out / "jobs" / f"{r['job_id']}_0_log.out").is_file() for r in index.values())
    short = out / "runs" / "short-s1" / "metrics.jsonl"
    before = short.stat().st_mtime_ns
    ckpt = out / "runs" / "long-s1" / "checkpoints" / "step_000002"
    ckpt_time = ckpt.stat().st_mtime_ns

    again = _sweep(spec, out)
    assert again.returncode == 0, again.stderr
    after = {r["name"]: r for r in read_index(out)}
    assert {n: r["status"] for n, r in after.items()} == {"short-s1": "finished", "long-s1": "finished"}
    assert after["short-s1"]["job_id"] == index["short-s1"]["job_id"]  # not submitted again
    assert after["long-s1"]["job_id"] != index["long-s1"]["job_id"]
    assert short.stat().st_mtime_ns == before
    assert ckpt.stat().st_mtime_ns == ckpt_time  # resumed from it, not retrained
    steps = [r["step"] for r in read_metrics(out / "runs" / "long-s1" / "metrics.jsonl") if "event" not in r]
    assert steps == list(range(4))


@pytest.mark.slow
def test_a_two_process_run_trains_under_torchrun(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_docs=6, words_per_doc=200)
    spec = write_spec(tmp_path / "s.toml", corpus, 'cluster = "local"\nprocs = 2',
                      **{"train.max_steps": 2, "train.eval_every": 0})
    done = _sweep(spec, tmp_path / "sweep")
    assert done.returncode == 0, done.stderr
    (run,) = read_index(tmp_path / "sweep")
    assert run["status"] == "finished"
    assert json.loads((tmp_path / "sweep" / run["dir"] / "provenance.json").read_text())["world_size"] == 2


def test_time_limit_checkpoints_the_trainer_and_requeues_with_resume(tmp_path):
    # SLURM's warning before the limit calls submitit's `checkpoint` hook: it must let the trainer
    # save (SIGTERM, then wait) and requeue the same run with --resume, once.
    import time

    mark = tmp_path / "saved"
    trainer = (  # stands in for `steadylm train`, which checkpoints and exits on SIGTERM
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(mark)!r}).write_text('ok'), sys.exit(0)))\n"
        f"pathlib.Path({str(tmp_path / 'up')!r}).write_text('')\n"
        "time.sleep(60)\n"
    )
    job = TrainJob(["train", "--out", "R"])
    job._child = subprocess.Popen([sys.executable, "-c", trainer])
    deadline = time.monotonic() + 30
    while not (tmp_path / "up").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    again = job.checkpoint()
    assert job._child.returncode == 0 and mark.read_text() == "ok"
    assert again.function.train_args == ["train", "--out", "R", "--resume"]
    assert again.function.checkpoint().function.train_args.count("--resume") == 1
