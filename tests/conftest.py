"""Shared fixtures: one steadylm cache per test run, and generated text (tests use no third-party text)."""

import os
import random

import pytest


@pytest.fixture(scope="session", autouse=True)
def steadylm_cache_dir(tmp_path_factory):
    """Point STEADYLM_CACHE_DIR at one folder per test run, shared by the pytest-xdist workers.

    Registry downloads (GPT-2 tokenizer, default corpus) then happen once per run, and tests never
    write to the user's own cache. Workers filling it at once is safe: cache writes are atomic.
    """
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # each worker's basetemp is a sibling in one per-run folder
    path = root / "steadylm-cache"
    patch = pytest.MonkeyPatch()
    patch.setenv("STEADYLM_CACHE_DIR", str(path))
    yield path
    patch.undo()


_SYLLABLES = ["ka", "lo", "mi", "ren", "tha", "vos", "un", "der", "el", "pra", "sti", "qu", "ob", "na",
              "zed", "il", "or", "fen", "a", "i", "se", "to", "ba", "rum"]  # fmt: skip
_rng = random.Random(0)
_WORDS = sorted({"".join(_rng.choices(_SYLLABLES, k=_rng.randint(1, 4))) for _ in range(600)})


def generate_text(seed: int, n_words: int) -> str:
    """Pseudo-English: Zipf-distributed made-up words in sentences and paragraphs."""
    rng = random.Random(seed)
    words = rng.choices(_WORDS, weights=[1 / (i + 1) for i in range(len(_WORDS))], k=n_words)
    out = []
    for i, word in enumerate(words):
        sentence_start = i == 0 or out[-1].endswith((".", "?", "\n"))
        out.append(word.capitalize() if sentence_start else word)
        r = rng.random()
        out[-1] += "." if r < 0.08 else "," if r < 0.14 else "?" if r < 0.15 else ""
        if out[-1].endswith(".") and rng.random() < 0.2:
            out[-1] += "\n"
    return " ".join(out).replace("\n ", "\n\n") + "\n"


@pytest.fixture(scope="session")
def make_text():
    """`make_text(seed, n_words)`: deterministic generated text."""
    return generate_text
