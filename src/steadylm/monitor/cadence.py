"""When a periodic monitor runs: `monitor.*_every` steps, 0 meaning never."""

from __future__ import annotations


def due(every: int, step: int) -> bool:
    """True at steps 0, every, 2·every, ...; never when `every` is 0."""
    return every > 0 and step % every == 0
