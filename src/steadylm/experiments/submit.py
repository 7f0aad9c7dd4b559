"""`steadylm sweep --launcher submitit`: each run of a sweep as a cluster job, through submitit.

The sweep stays the one in charge: it submits a job per run that is not done, records the job id
in DIR/index.jsonl, waits and takes each run's outcome from its status.json, as the local launcher
does. A run that spans more than one process runs under torchrun. Re-running the command follows
jobs that are still queued or running, keeps finished and diverged runs, and submits the rest,
resuming from their checkpoints. Submitit's files (pickled jobs, logs) go to DIR/jobs/.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadylm.config import check_type
from steadylm.errors import ConfigError, SteadyLMError
from steadylm.registry import check_choice, suggest
from steadylm.status import RunStatus

if typing.TYPE_CHECKING:
    from steadylm.experiments.sweep import Entry, Sweep

CLUSTERS = ("slurm", "local")
# SLURM states of a job that may still run; submitit's local jobs are alive only in this process.
FAILED = "steadylm train exited with code"
_ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


@dataclass
class LauncherConfig:
    """Each job's resources: the spec's `[sweep.launcher]` table, then `steadylm sweep` flags."""

    cluster: str = "slurm"  # or "local": every job at once as a process here, to try a spec
    partition: str = ""  # SLURM partition; "" is the cluster's default
    account: str = ""  # SLURM account; "" is the user's default
    time: int = 60  # minutes per job; before the limit the run checkpoints and the job is requeued
    nodes: int = 1
    gpus: int = 0  # GPUs per node
    procs: int = 0  # training processes per node; 0: one per GPU (1 without GPUs)
    cpus: int = 0  # CPUs per node (and OMP_NUM_THREADS per process); 0: the cluster's default
    mem_gb: int = 0  # memory per node; 0: the cluster's default

    @property
    def procs_per_node(self) -> int:
        return self.procs or max(1, self.gpus)

    def validate(self, where: str = "[sweep.launcher] ") -> LauncherConfig:
        """Check the values; `where` + key names a bad one (`--` for flags)."""
        check_choice(f"{where}cluster", self.cluster, CLUSTERS)
        for key in ("time", "nodes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("gpus", "procs", "cpus", "mem_gb"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}{key}: must be >= 0, got {getattr(self, key)}")
        if self.cluster == "local" and self.nodes > 1:
            raise ConfigError(
                f"{where}nodes: the local cluster is this one machine; got {self.nodes}"
            )
        return self


def launcher_config(spec: dict[str, Any], flags: dict[str, Any] | None = None) -> LauncherConfig:
    """The spec's `[sweep.launcher]` table, then the flags given on the command line."""
    cfg = LauncherConfig()
    hints = typing.get_type_hints(LauncherConfig)
    names = [f.name for f in dataclasses.fields(LauncherConfig)]
    for where, table in (("[sweep.launcher] ", spec), ("--", flags or {})):
        for key, value in table.items():
            if key not in names:
                raise ConfigError(
                    f"{where}{key}: unknown key; valid keys: {', '.join(names)}"
                    + suggest(key, names)
                )
            setattr(cfg, key, check_type(f"{where}{key}", value, hints[key]))
        cfg.validate(where)
    return cfg


@dataclass
class TrainJob:
    """What a job runs: `steadylm train` for one run, under torchrun when it spans processes.

    Pickled by submitit and called on the node. `checkpoint` is submitit's hook for the warning
    SLURM sends before the time limit or a preemption: the trainer checkpoints on SIGTERM, and
    the job is requeued with --resume.
    """

    train_args: list[str]
    nodes: int = 1
    procs_per_node: int = 1
    threads: int = 0  # OMP_NUM_THREADS per process; 0 leaves the job's environment as it is
    _child: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def command(self, node: int = 0, master_addr: str = "", job_id: str = "0") -> list[str]:
        train = ["-m", "steadylm", *self.train_args]
        if self.nodes * self.procs_per_node == 1:
            return [sys.executable, *train]
        run = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(self.procs_per_node),
        ]
        if self.nodes == 1:
            return [*run, "--standalone", *train]
        # Every node runs this with the same job id, so they agree on the port without talking.
        port = 20000 + int("".join(c for c in job_id if c.isdigit()) or 0) % 20000
        return [
            *run,
            "--nnodes",
            str(self.nodes),
            "--node_rank",
            str(node),
            "--master_addr",
            master_addr,
            "--master_port",
            str(port),
            *train,
        ]

    def __call__(self) -> int:
        import submitit

        job = submitit.JobEnvironment()
        env = dict(os.environ)
        if self.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        cmd = self.command(job.node, job.hostnames[0], job.job_id)
        print("$ " + " ".join(cmd), flush=True)
        # The trainer's stderr passes through, and its last line (the error) names the failure.
        self._child = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        last = ""
        assert self._child.stderr is not None
        for line in self._child.stderr:
            sys.stderr.write(line)
            last = line.strip() or last
        code = self._child.wait()
        if code != 0:
            raise RuntimeError(f"{FAILED} {code}" + (f": {last}" if last else ""))
        return code

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_child": None}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGTERM)  # finish the step, save, exit
            self._child.wait()
        resume = (
            self.train_args if "--resume" in self.train_args else [*self.train_args, "--resume"]
        )
        return submitit.helpers.DelayedSubmission(
            dataclasses.replace(self, train_args=resume, _child=None)
        )


class SubmititLauncher:
    """Trains a sweep's runs as jobs and waits for them (`Sweep.run(launcher=...)`).

    Made before the sweep writes anything, so a missing submitit or cluster leaves no files."""

    def __init__(self, cfg: LauncherConfig):
        if importlib.util.find_spec("submitit") is None:
            raise SteadyLMError(
                "--launcher submitit: the submitit package is not installed; "
                "pip install 'steadylm[slurm]'"
            )
        self.cfg = cfg
        self.cluster = cfg.cluster
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise SteadyLMError(
                "--launcher submitit: no SLURM cluster found (sbatch is not on PATH); "
                "run on a cluster's login node, or use --cluster local to run the jobs here"
            )

    def executor(self, folder: Path) -> Any:
        import submitit

        c = self.cfg
        try:
            ex = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        except RuntimeError as e:  # submitit found no SLURM where one was asked for
            said = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SteadyLMError(f"--launcher submitit: cluster {self.cluster!r}: {said}") from None
        params: dict[str, Any] = dict(
            name="steadylm",
            timeout_min=c.time,
            nodes=c.nodes,
            tasks_per_node=1,
            gpus_per_node=c.gpus,
        )
        params.update({k: v for k, v in (("cpus_per_task", c.cpus), ("mem_gb", c.mem_gb)) if v})
        params.update(
            {f"slurm_{k}": v for k, v in (("partition", c.partition), ("account", c.account)) if v}
        )
        ex.update_parameters(**params)
        return ex

    def run(self, sweep: Sweep, bar: Any) -> bool:
        """Submit what is not done (following jobs still alive) and wait; False if interrupted."""
        ex = self.executor(sweep.out / "jobs")
        poll = 0.5 if ex.cluster == "local" else 15.0
        waiting = {}
        for e in sweep.todo:
            job = self._alive(ex, e)
            if job is None:
                job = ex.submit(
                    TrainJob(
                        sweep.train_args(e),
                        self.cfg.nodes,
                        self.cfg.procs_per_node,
                        self.cfg.cpus // self.cfg.procs_per_node,
                    )
                )
                e.job_id = job.job_id
            e.status, e.error = RunStatus.SUBMITTED, None
            waiting[e.plan.name] = (e, job, time.perf_counter())
        sweep.write_index()
        try:
            while waiting:
                time.sleep(poll)
                for name, (e, job, started) in list(waiting.items()):
                    if job.done():
                        del waiting[name]
                        self._collect(e, job)
                        sweep._finish(e, bar, started)
                    elif e.status == RunStatus.SUBMITTED and job.state == "RUNNING":
                        e.status = RunStatus.RUNNING
                        sweep.write_index()
        except KeyboardInterrupt:
            # Cluster jobs are not ours to stop: they go on, and a re-run follows them.
            return False
        return True

    def _alive(self, ex: Any, e: Entry) -> Any:
        """The job an earlier sweep command submitted for `e`, if SLURM still runs or queues it."""
        if e.job_id is None or ex.cluster != "slurm":
            return None
        import submitit

        job: Any = submitit.SlurmJob(folder=ex.folder, job_id=e.job_id)
        return job if job.state.split()[0] in _ALIVE else None

    @staticmethod
    def _collect(e: Entry, job: Any) -> None:
        from steadylm.experiments.sweep import collect_status

        try:
            failure = job.exception()
        except Exception as exc:  # the job vanished without a result (cancelled, node failure)
            failure = exc
        if not collect_status(e, failure is None):
            said = [
                ln.split(FAILED, 1)[1] for ln in (job.stderr() or "").splitlines() if FAILED in ln
            ]
            e.status = RunStatus.FAILED
            e.error = f"job {job.job_id}: " + (
                f"exit code{said[-1]}" if said else type(failure).__name__
            )
