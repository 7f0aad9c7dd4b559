"""Words, the vocabulary and the word-context co-occurrence counts #(w, c) that every method shares.

Text is lower-cased and cut into words (runs of letters, with inner apostrophes: "don't"). The
vocabulary is the N most frequent words (ties by spelling, so it is deterministic); other words are
removed before windowing, as word2vec does, so a window spans N-vocabulary words. Each document is
then cut into units of at most `UNIT_WORDS` words (gensim's longest sentence), and #(w, c) counts c
at distance 1..window on either side of w inside a unit, unweighted. The same units are gensim's
sentences, so all three methods see exactly the same pairs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from steadylm.data.corpus import Document
from steadylm.errors import DataError

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
UNIT_WORDS = 10_000  # gensim's MAX_WORDS_IN_BATCH: longer sentences are cut there
_PAIR_CHUNK = 1 << 22  # pairs added to the matrix at once (64 MB of int64 keys)


def words_of(text: str) -> list[str]:
    return WORD.findall(text.lower())


@dataclass
class Counts:
    """Co-occurrence counts of an N-word vocabulary; D is symmetric because windows are."""

    words: list[str]  # N words, most frequent first
    frequency: np.ndarray  # (N,) corpus frequency of each word
    D: torch.Tensor  # (N, N) float32, #(w, c)
    units: list[np.ndarray]  # word ids per unit (gensim's sentences)
    n_words: int  # words in the corpus before the vocabulary cut
    window: int

    @property
    def total(self) -> float:
        """|D|, the number of (w, c) pairs."""
        return float(self.D.sum(dtype=torch.float64))

    @property
    def word_counts(self) -> torch.Tensor:
        """#(w) = sum_c #(w, c), (N,) float32."""
        return self.D.sum(dim=1)

    @property
    def context_counts(self) -> torch.Tensor:
        """#(c) = sum_w #(w, c), (N,) float32."""
        return self.D.sum(dim=0)


def build_vocab(docs_words: Iterable[list[str]], size: int) -> tuple[list[str], np.ndarray, int]:
    """The `size` most frequent words, their frequencies and the corpus's word count."""
    freq: Counter[str] = Counter()
    for words in docs_words:
        freq.update(words)
    n_words = sum(freq.values())
    if n_words == 0:
        raise DataError("the corpus holds no words (letters); give text")
    if len(freq) < size:
        raise DataError(
            f"--vocab {size}: the corpus has only {len(freq)} distinct words; choose --vocab <= {len(freq)}"
        )
    top = sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    return [w for w, _ in top], np.array([c for _, c in top], dtype=np.int64), n_words


def count(docs: list[Document], vocab: int, window: int, device: torch.device | str = "cpu",
          progress: bool = True) -> Counts:  # fmt: skip
    """Tokenise `docs`, keep the top `vocab` words and count their co-occurrences within `window`."""
    docs_words = [
        words_of(doc.text) for doc in tqdm(docs, desc="words", unit="doc", disable=not progress)
    ]
    words, frequency, n_words = build_vocab(docs_words, vocab)
    index = {w: i for i, w in enumerate(words)}
    units = []
    for doc_words in docs_words:
        ids = np.fromiter((index[w] for w in doc_words if w in index), dtype=np.int64)
        units += [ids[i : i + UNIT_WORDS] for i in range(0, len(ids), UNIT_WORDS)]
    n = len(words)
    D = torch.zeros(n * n, dtype=torch.float32, device=device)  # flat (N*N,) for index_add_
    keys, pending = [], 0
    for ids in tqdm(units, desc="co-occurrences", unit="unit", disable=not progress):
        for offset in range(1, window + 1):
            if len(ids) > offset:
                left, right = ids[:-offset], ids[offset:]
                keys += [
                    left * n + right,
                    right * n + left,
                ]  # both directions: the window is symmetric
                pending += 2 * len(left)
        if pending >= _PAIR_CHUNK:
            _add(D, keys)
            keys, pending = [], 0
    _add(D, keys)
    D = D.view(n, n)
    if not bool(D.any()):
        raise DataError(
            "no two vocabulary words are within the window of each other; give more text"
        )
    return Counts(words, frequency, D, units, n_words, window)


def _add(D: torch.Tensor, keys: list[np.ndarray]) -> None:
    if keys:
        k = torch.from_numpy(np.concatenate(keys)).to(D.device)
        D.index_add_(0, k, torch.ones(len(k), dtype=D.dtype, device=D.device))
