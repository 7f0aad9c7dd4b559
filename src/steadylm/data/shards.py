"""Binary token shards: a 1 KiB header, then the token ids as little-endian uint16 or uint32.

Header (little-endian): magic u32, format version u32, bytes per token u32, reserved u32, token count
u64, zero padding to 1024 bytes. The count makes truncation detectable, and the fixed header size
keeps the tokens aligned for `np.memmap`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steadylm.errors import DataError
from steadylm.fsutil import atomic_write

MAGIC = 0x4D4C5453  # b"STLM" read as a little-endian u32
VERSION = 1
HEADER_BYTES = 1024
_HEADER = np.dtype([("magic", "<u4"), ("version", "<u4"), ("itemsize", "<u4"), ("reserved", "<u4"),
                    ("count", "<u8")])  # fmt: skip
_DTYPES: dict[int, np.dtype] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def write_shard(path: Path | str, tokens: np.ndarray) -> None:
    """Write a 1-D array of non-negative token ids, as uint16 when every id is below 65536.

    Atomic: the file appears complete at `path` or not at all.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"tokens must be a 1-D integer array, got shape {tokens.shape} {tokens.dtype}"
        )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**32):
        raise ValueError(f"token ids must be in [0, 2**32), got [{tokens.min()}, {tokens.max()}]")
    dtype = _DTYPES[2] if tokens.size == 0 or tokens.max() < 2**16 else _DTYPES[4]
    header = np.zeros(1, _HEADER)
    header[0] = (MAGIC, VERSION, dtype.itemsize, 0, tokens.size)
    with atomic_write(path) as f:
        f.write(header.tobytes().ljust(HEADER_BYTES, b"\0"))
        f.write(np.ascontiguousarray(tokens, dtype=dtype).data)  # no copy when already in dtype


def read_shard(path: Path | str) -> np.ndarray:
    """The shard's tokens as a read-only `np.memmap` (nothing is read until used)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such token shard")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(
            f"{path}: truncated token shard ({size} bytes, shorter than its {HEADER_BYTES}-byte header)"
        )
    header = np.fromfile(path, dtype=_HEADER, count=1)[0]
    if header["magic"] != MAGIC:
        raise DataError(
            f"{path}: not a steadylm token shard (bad magic number); prepare the data again"
        )
    if header["version"] != VERSION:
        raise DataError(
            f"{path}: token shard format version {header['version']}; this steadylm reads {VERSION}"
        )
    if int(header["itemsize"]) not in _DTYPES:
        raise DataError(
            f"{path}: corrupt token shard header ({header['itemsize']} bytes per token; valid: 2, 4)"
        )
    dtype = _DTYPES[int(header["itemsize"])]
    count = int(header["count"])
    expected = HEADER_BYTES + count * dtype.itemsize
    if size != expected:
        raise DataError(
            f"{path}: {'truncated' if size < expected else 'corrupt'} token shard "
            f"({size} bytes; its header promises {count} tokens = {expected} bytes)"
        )
    if count == 0:
        return np.zeros(0, dtype)  # mmap cannot map zero bytes
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))
