"""The options of `steadylm embed`, in one dataclass whose field comments serve as `--help`.

The same options form the `[embed]` table of a TOML file (`--config`) and the `embed.key=value`
overrides of `--set` and of sweep specs (`[sweep] job = "embed"`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from steadylm.config import (
    documented,
    field_help,
    load_section_config,
    table_toml,
)
from steadylm.errors import SteadyLMError

SECTION = "embed"

METHODS = ("ro_sgns", "sgns", "svd_sppmi")


@dataclass
class EmbedConfig:
    """Word embeddings from one corpus by one method; every method is scored on the same counts."""

    method: str = documented(
        "ro_sgns",
        "ro_sgns (Riemannian SGNS from the SVD-SPPMI start) | sgns (gensim word2vec) | svd_sppmi",
    )
    dim: int = documented(100, "embedding dimension d, the rank of X = W C^T")
    vocab: int = documented(10_000, "the N most frequent words; pairs with other words are dropped")
    window: int = documented(2, "context words on each side (the paper's word2vec 'window 5' is 2)")
    neg: int = documented(5, "negative samples k; also the shift log k of SPPMI")
    # Like `data.path` of the train config: one name or path, or a list of them.
    corpus: str | list[str] = documented(
        "default",
        "a named corpus ('default', 'wide') and/or .txt/.jsonl/.parquet files and folders",
    )
    text_field: str = documented("text", "field holding the text in .jsonl/.parquet records")
    iters: int = documented(25, "ro_sgns: projector-splitting iterations")
    step: str = documented(
        "auto", "ro_sgns: step lambda, or 'auto' (the first step moves X by a tenth of its norm)"
    )
    line_search: bool = documented(
        True, "ro_sgns: Armijo backtracking on F from `step`; off = the paper's fixed lambda"
    )
    epochs: int = documented(5, "sgns: passes of gensim's SGD over the corpus")
    sample: float = documented(
        0.0, "sgns: word2vec's down-sampling threshold; 0 trains on exactly the counted pairs"
    )
    svd_iters: int = documented(
        10, "svd_sppmi (and ro_sgns's start): power iterations of the randomised truncated SVD"
    )
    seed: int = documented(0, "seeds gensim and the randomised SVD")
    device: str = documented(
        "auto", "auto (cuda when available) | cpu | cuda | cuda:N (matrix methods)"
    )

    def validate(self) -> EmbedConfig:
        if self.method not in METHODS:
            raise SteadyLMError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        for name, low in (("dim", 1), ("vocab", 2), ("window", 1), ("neg", 1), ("epochs", 1), ("svd_iters", 0),
                          ("iters", 0)):  # fmt: skip
            if getattr(self, name) < low:
                raise SteadyLMError(
                    f"--{name.replace('_', '-')}: must be >= {low}, got {getattr(self, name)}"
                )
        if self.dim >= self.vocab:
            raise SteadyLMError(
                f"--dim {self.dim} must be smaller than --vocab {self.vocab} (X has rank <= vocab)"
            )
        if not 0.0 <= self.sample < 1.0:
            raise SteadyLMError(f"--sample: must be in [0, 1), got {self.sample}")
        if self.step != "auto":
            try:
                lam = float(self.step)
            except ValueError:
                lam = -1.0
            if not lam > 0:
                raise SteadyLMError(f"--step {self.step!r}: give a positive number or 'auto'")
        elif not self.line_search:
            raise SteadyLMError(
                "--no-line-search needs a numeric --step (the fixed lambda), e.g. --step 5e-5"
            )
        paths = [self.corpus] if isinstance(self.corpus, str) else self.corpus
        if not paths or any(not p for p in paths):
            raise SteadyLMError(
                "--corpus: give 'default', 'wide' or files/folders (.txt, .jsonl, .parquet)"
            )
        return self

    def to_toml(self) -> str:
        return table_toml(SECTION, dataclasses.asdict(self))


help_of = functools.partial(field_help, EmbedConfig)  # an option's `--help` text, by name


def load_embed_config(
    source: str | Path | None = None, overrides: Sequence[str] = ()
) -> EmbedConfig:
    """A validated EmbedConfig from an optional TOML file with a `[embed]` table, then
    `embed.key=value` overrides in order (a later one wins)."""
    return load_section_config(EmbedConfig, SECTION, source, overrides)
