"""Run a sweep: every run of a spec in its own run directory, resumable, optionally in parallel.

    DIR/spec.toml       the spec as given (a re-run must use it, or a spec that only adds runs)
    DIR/index.jsonl     one line per run: name, variant, grid, seed, overrides, status, step, dir
    DIR/runs/NAME/      the run directory (config.toml, metrics.jsonl, status.json, checkpoints/)
    DIR/logs/NAME.log   output of runs trained in subprocesses (--jobs > 1)

Re-running the same command continues the sweep: finished and diverged runs are kept as they
are, runs with a config.toml that did not finish are resumed from their latest checkpoint, and
the rest start. A run that fails is recorded with its error and the sweep goes on. A spec
that keeps every run of the folder's spec as it was and adds runs (a control arm, a seed)
continues the sweep with them; any other change is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadylm.errors import SteadyLMError
from steadylm.experiments.jobs import JOBS
from steadylm.experiments.spec import RunPlan, SweepSpec, extension_conflicts, spec_from_raw
from steadylm.fsutil import atomic_write
from steadylm.rundir import read_status
from steadylm.status import RunStatus

POLL_SECONDS = 0.2


def read_index(sweep_dir: Path) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / "index.jsonl"
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


@dataclass
class Entry:
    plan: RunPlan
    cfg: Any  # the job's validated config
    run_dir: Path
    status: RunStatus = RunStatus.PENDING
    step: int = 0
    error: str | None = None
    seconds: float | None = None
    job_id: str | None = None  # the cluster job that trains it (`--launcher submitit`)

    def record(self, root: Path) -> dict[str, Any]:
        rec = {
            **self.plan.index_fields(),
            "status": self.status,
            "step": self.step,
            "dir": str(self.run_dir.relative_to(root)),
        }
        if self.error:
            rec["error"] = self.error
        if self.seconds is not None:
            rec["seconds"] = round(self.seconds, 1)
        if self.job_id is not None:
            rec["job_id"] = self.job_id
        return rec

    def resumable(self) -> bool:
        return (self.run_dir / "config.toml").is_file()


class Sweep:
    """The runs of `spec` under `out`; `run()` trains what is not done yet."""

    def __init__(self, spec: SweepSpec, out: str | Path):
        self.spec = spec
        self.out = Path(out)
        # Resolving every config first: a typo in the last variant must not wait hours to surface.
        self.entries = [
            Entry(plan, cfg, self.out / "runs" / plan.name) for plan, cfg in spec.resolve()
        ]
        index = self.out / "index.jsonl"
        # What only the index knows (the cluster job, a finished run's wall time) outlives the
        # process that wrote it: a sweep continued elsewhere must not drop it.
        before = {r["name"]: r for r in read_index(self.out)} if index.is_file() else {}
        for e in self.entries:
            rec = before.get(e.plan.name, {})
            e.job_id, e.seconds = rec.get("job_id"), rec.get("seconds")
            st = read_status(e.run_dir)
            status = _status_of(st)
            if status is not None and status.is_result:
                e.status, e.step = status, int(st.get("step", 0))

    @property
    def todo(self) -> list[Entry]:
        return [e for e in self.entries if not e.status.is_result]

    # ------------------------------------------------------------------ files

    def _check_out(self) -> None:
        copy = self.out / "spec.toml"
        if copy.is_file():
            import tomllib

            try:
                old = spec_from_raw(self.spec.path, tomllib.loads(copy.read_text(encoding="utf-8")))
                problems = (
                    []
                    if old.identity == self.spec.identity
                    else extension_conflicts(old, self.spec)
                )
            except (SteadyLMError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                problems = [f"its copy no longer reads as a spec ({e})"]
            if problems:
                raise SteadyLMError(
                    f"--out: {self.out} holds a sweep of a different spec ({copy}): "
                    f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}. A spec may "
                    "only add runs to a sweep; re-run with that spec, or choose another folder"
                )
        elif self.out.exists() and any(self.out.iterdir()):
            raise SteadyLMError(
                f"--out: {self.out} already holds other files; choose an empty or new folder"
            )

    def write_index(self) -> None:
        text = "".join(json.dumps(e.record(self.out)) + "\n" for e in self.entries)
        with atomic_write(self.out / "index.jsonl") as f:
            f.write(text.encode("utf-8"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int | None]:
        """Hold DIR/.lock so that two sweeps never train the same run at once. Subprocesses
        inherit the lock, so it outlives a sweep killed while its runs still train."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield None
            return
        fd = os.open(self.out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SteadyLMError(
                    f"--out: another sweep (or its runs) is still training in {self.out}"
                ) from None
            yield fd
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ running

    def run(self, jobs: int = 1, progress: bool = True, launcher: Any = None) -> bool:
        """Train every run not done; returns False if the sweep was interrupted.

        `launcher` (a `submit.SubmititLauncher`) trains each run as a cluster job instead of here.
        """
        self._check_out()
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        with self._locked() as lock:
            with atomic_write(self.out / "spec.toml") as f:
                f.write(self.spec.path.read_bytes())
            self.write_index()
            bar = _progress(len(self.entries), len(self.entries) - len(self.todo), progress)
            try:
                with _sigterm_as_interrupt():
                    if launcher is not None:
                        return launcher.run(self, bar)
                    if jobs == 1:
                        return self._sequential(bar)
                    return self._parallel(jobs, bar, lock)
            finally:
                self.write_index()
                if bar is not None:
                    bar.close()

    def _finish(self, e: Entry, bar, started: float) -> None:
        e.seconds = time.perf_counter() - started
        if e.status != RunStatus.STOPPED:
            _announce(bar, e)
        self.write_index()

    def _sequential(self, bar) -> bool:
        job = JOBS[self.spec.job]
        for e in self.todo:
            started = time.perf_counter()
            e.status, e.error = RunStatus.RUNNING, None
            self.write_index()
            _show(bar, [e])
            try:
                result = job.run(e.cfg, e.run_dir, e.resumable())
                e.status, e.step, e.error = RunStatus(result.status), result.step, result.reason
            except KeyboardInterrupt:
                e.status = RunStatus.STOPPED
                raise
            except Exception as exc:  # a failed run is a result to record, not the end of the sweep
                e.status, e.error = (
                    RunStatus.FAILED,
                    str(exc) if isinstance(exc, SteadyLMError) else f"{type(exc).__name__}: {exc}",
                )
                e.step = int(read_status(e.run_dir).get("step", 0))
            self._finish(e, bar, started)
            if (
                e.status == RunStatus.STOPPED
            ):  # SIGINT/SIGTERM: the trainer saved a checkpoint; stop here
                return False
        return True

    def _parallel(self, jobs: int, bar, lock: int | None) -> bool:
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
        threads = str(max(1, cores // jobs))
        # Each process would otherwise start one thread per core and they would fight for them.
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        (self.out / "logs").mkdir(exist_ok=True)
        queue = list(self.todo)
        running: dict[subprocess.Popen, tuple[Entry, float, int]] = {}
        try:
            while queue or running:
                if queue and len(running) < jobs:
                    while queue and len(running) < jobs:
                        e = queue.pop(0)
                        running[self._spawn(e, env, lock)] = (
                            e,
                            time.perf_counter(),
                            _log_size(self._log(e)),
                        )
                        e.status, e.error = RunStatus.RUNNING, None
                        self.write_index()
                    # Only when the running set changes: every redraw is a line in a redirected log.
                    _show(bar, [e for e, _, _ in running.values()])
                time.sleep(POLL_SECONDS)
                for proc in [p for p in running if p.poll() is not None]:
                    e, started, log_start = running.pop(proc)
                    self._collect(e, proc.returncode, log_start)
                    self._finish(e, bar, started)
        except KeyboardInterrupt:
            # The trainers checkpoint and stop on SIGTERM; wait so no run is left half-saved.
            for proc in running:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            for proc, (e, started, log_start) in running.items():
                proc.wait()
                self._collect(e, proc.returncode, log_start)
                if (
                    e.status == RunStatus.FAILED
                ):  # most likely our SIGTERM arrived before its handler was set
                    e.status, e.error = RunStatus.STOPPED, None
                self._finish(e, bar, started)
            return False
        return True

    def _log(self, e: Entry) -> Path:
        return self.out / "logs" / f"{e.plan.name}.log"

    def train_args(self, e: Entry) -> list[str]:
        """The job's `steadylm` arguments for run `e` (after `python -m steadylm`), resuming if it can."""
        base = ["--config", self.spec.base] if self.spec.base else []
        args = [
            JOBS[self.spec.job].command,
            *base,
            *[a for o in e.plan.override_args() for a in ("--set", o)],
            "--out",
            str(e.run_dir),
            "--no-progress",
        ]
        return args + ["--resume"] if e.resumable() else args

    def _spawn(self, e: Entry, env: dict[str, str], lock: int | None) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "steadylm", *self.train_args(e)]
        with open(self._log(e), "ab") as log:  # the child keeps its own copy of the descriptor
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            return subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(lock,) if lock is not None else (),
            )

    def _collect(self, e: Entry, code: int, log_start: int) -> None:
        if not collect_status(e, code == 0):
            tail = _last_line(self._log(e), log_start)
            e.status, e.error = (
                RunStatus.FAILED,
                f"exit code {code}" + (f": {tail}" if tail else ""),
            )


def _status_of(st: dict[str, Any]) -> RunStatus | None:
    try:
        return RunStatus(st.get("status", ""))
    except ValueError:
        return None


def collect_status(e: Entry, exited_cleanly: bool) -> bool:
    """Take the outcome of a run trained elsewhere from its status.json; False if it failed
    without saying so (the caller records why)."""
    st = read_status(e.run_dir)
    e.step = int(st.get("step", 0))
    status = _status_of(st)
    if status is None or not (status.is_result or (exited_cleanly and status == RunStatus.STOPPED)):
        return False
    # status.json is written last: a run killed after it (at exit) is still complete.
    e.status, e.error = status, st.get("reason") if status == RunStatus.DIVERGED else None
    return True


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _last_line(path: Path, start: int) -> str:
    """The last non-empty line this attempt wrote (its error message, for a failed run)."""
    with open(path, "rb") as f:
        f.seek(start)
        lines = [
            ln
            for ln in f.read().decode("utf-8", "replace").splitlines()
            if ln.strip() and not ln.startswith("===")
        ]
    return lines[-1].strip() if lines else ""


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="sweep", unit="run", dynamic_ncols=True)


def _show(bar, entries: list[Entry]) -> None:
    if bar is not None:
        bar.set_postfix_str(", ".join(e.plan.name for e in entries))


def _announce(bar, e: Entry) -> None:
    if bar is None:
        return
    bar.update(1)
    if e.status != RunStatus.FINISHED:
        bar.write(f"{e.plan.name}: {e.status}" + (f" ({e.error})" if e.error else ""))


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops the sweep like Ctrl-C does (runs checkpoint, the index is written)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
