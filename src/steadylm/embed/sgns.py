"""SGD-SGNS: gensim's word2vec (skip-gram, negative sampling), the paper's SGD baseline.

It trains on the counts' own units and vocabulary with a fixed window (`shrink_windows=False`:
word2vec's default draws a smaller window per word, which would count other pairs than #(w, c)) and,
by default, no down-sampling of frequent words, so it optimises the same F as the matrix methods
(with word2vec's usual unigram^0.75 noise distribution). One worker thread and a hash of the word
that does not change between processes make a run repeatable for a given seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from steadylm.embed.counts import Counts
from steadylm.errors import SteadyLMError


def _stable_hash(text: str) -> int:
    """gensim seeds each word's initial vector with hash(word + seed); Python's str hash differs
    in every process, which would make runs differ for the same seed."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def sgns(counts: Counts, dim: int, neg: int, epochs: int, sample: float, seed: int, progress: bool = True,
         on_epoch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
         ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Word vectors W (N, d) and context vectors C (N, d), rows in the counts' word order.

    `on_epoch(epoch, W, C)` is called before training (epoch 0) and after every epoch."""
    try:
        from gensim.models import Word2Vec  # type: ignore[import-untyped]  # gensim ships no type stubs
        from gensim.models.callbacks import CallbackAny2Vec  # type: ignore[import-untyped]  # no stubs
    except ImportError:
        raise SteadyLMError(
            "--method sgns needs gensim: pip install 'steadylm[embed]' (or gensim==4.4.0)"
        ) from None

    sentences = [[counts.words[i] for i in ids] for ids in counts.units]
    bar = tqdm(total=epochs, desc="sgns (gensim)", unit="epoch", disable=not progress)
    order: np.ndarray | None = None

    def vectors(model) -> tuple[torch.Tensor, torch.Tensor]:
        W = torch.from_numpy(np.ascontiguousarray(model.wv.vectors[order], dtype=np.float32))
        C = torch.from_numpy(np.ascontiguousarray(model.syn1neg[order], dtype=np.float32))
        return W, C

    class _Tick(CallbackAny2Vec):
        epoch = 0

        def on_train_begin(self, model) -> None:
            if on_epoch:
                on_epoch(0, *vectors(model))

        def on_epoch_end(self, model) -> None:
            self.epoch += 1
            bar.update(1)
            if on_epoch:
                on_epoch(self.epoch, *vectors(model))

    model = Word2Vec(
        vector_size=dim, window=counts.window, shrink_windows=False, sg=1, hs=0, negative=neg, sample=sample,
        min_count=1, seed=seed, workers=1, hashfxn=_stable_hash,
    )  # fmt: skip
    # The vocabulary is exactly ours (every unit word is in it, min_count=1).
    model.build_vocab(sentences)
    order = np.array([model.wv.key_to_index[w] for w in counts.words])
    model.train(sentences, total_examples=len(sentences), epochs=epochs, callbacks=[_Tick()])
    bar.close()
    return vectors(model)
