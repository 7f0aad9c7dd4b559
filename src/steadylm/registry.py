"""Variants chosen by name: one table per config key holds the valid names and makes the error.

A `Registry` is the dispatch table itself (name -> class, function or recipe), so adding an entry
is the one change that makes a new name valid, listed in errors and buildable. The config refers
to it from the field (`choice(default, "module:NAME")`) and checks values against it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from steadylm.errors import ConfigError

T = TypeVar("T")


def suggest(word: str, options: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the option closest to a mistyped `word`, or "" if none is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(key: str, value: object, names: Iterable[str]) -> None:
    """One line naming the key, the bad value and the valid names, e.g.
    `model.attention: 'mlr' is not one of mha, mlra (did you mean 'mlra'?)`."""
    names = tuple(names)
    if value not in names:
        raise ConfigError(
            f"{key}: {value!r} is not one of {', '.join(names)}" + suggest(str(value), names)
        )


class Registry(Mapping[str, T], Generic[T]):
    """The variants of config key `key` (e.g. `model.attention`), in the order they are listed."""

    def __init__(self, key: str, entries: Mapping[str, T]):
        self.key = key
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> T:
        self.check(name)
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, name: object) -> None:
        check_choice(self.key, name, self._entries)
