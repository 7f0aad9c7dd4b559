"""tests/helpers.run_tree: a timed-out command is killed with every process it started, also one
in a session of its own, and the call returns rather than waiting on pipes the orphan holds."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from helpers import run_tree


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of an orphaned parent may linger as a zombie until init reaps it.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_timeout_kills_the_grandchildren_too(tmp_path):
    pid_file = tmp_path / "pid"
    # The grandchild leads a session of its own, as torchrun's ranks do.
    parent = ("import subprocess, sys, time; "
              "p = subprocess.Popen(['sleep', '60'], start_new_session=True); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")  # fmt: skip
    with pytest.raises(subprocess.TimeoutExpired):
        run_tree([sys.executable, "-c", parent], timeout=3)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_a_finished_command_returns_like_subprocess_run():
    proc = run_tree([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                    timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")
