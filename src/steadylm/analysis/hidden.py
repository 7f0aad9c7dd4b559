"""Collect every layer's hidden states of a model over a text sample.

Convention (the same for every model): hidden state 0 is the embedding output, i.e. the input
of the first block (for GPT-2 wte + wpe, for Llama the token embedding, for BERT the embeddings
after their LayerNorm); hidden state l (1..L) is the output of block l. All of them are taken
*before* any final norm (GPT-2's ln_f, Llama's norm), so each consecutive pair is exactly one
block. (`transformers`' own `hidden_states[-1]` is after the final norm in language models, which
makes its last pair mix a block with a normalisation.) They are read with forward hooks
(`steadylm.model.taps`), so the model's numerics are untouched.

Sampling follows the reference protocol of Razzhigaev et al.: the text is cut into chunks of
`chunk_chars` characters, the chunks are shuffled with a fixed seed, and each is tokenised on its
own with the model's special tokens (BOS for Llama, [CLS] ... [SEP] for BERT, none for steadylm
models) and run as one sequence. The first `drop_first` tokens of every sequence are dropped
(BOS and first-token "massive activations" dominate centring and norms). Token positions whose
states are identical at every layer (a repeated context) are kept once. Exactly `n_tokens`
positions are returned, or an error says the text is too short.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from steadylm.analysis.models import AnalysisModel
from steadylm.errors import SteadyLMError
from steadylm.model.taps import BlockTaps


@dataclass
class HiddenStates:
    states: list[np.ndarray]  # L+1 arrays (n, d) float32, aligned by row (see the module doc)
    ids: np.ndarray  # (n,) token id of each row
    sequences: int  # sequences run
    duplicates: int  # positions dropped because their states repeated an earlier one at every layer


def text_chunks(texts: list[str], chunk_chars: int = 512, seed: int = 0) -> list[str]:
    """Consecutive `chunk_chars`-character pieces of every text, in a seeded random order."""
    chunks = [t[i : i + chunk_chars] for t in texts for i in range(0, len(t), chunk_chars)]
    chunks = [c for c in chunks if c.strip()]
    order = np.random.default_rng(seed).permutation(len(chunks))
    return [chunks[i] for i in order]


@torch.no_grad()
def collect(
    model: AnalysisModel,
    texts: list[str],
    n_tokens: int = 4096,
    drop_first: int = 0,
    chunk_chars: int = 512,
    seed: int = 0,
    progress: bool = True,
) -> HiddenStates:
    """Hidden states 0..L of `n_tokens` distinct token positions (see the module doc)."""
    from tqdm.auto import tqdm

    taps = BlockTaps(model.blocks)
    rows: list[list[np.ndarray]] = [[] for _ in taps.states]  # per layer, (t, d) pieces
    ids: list[np.ndarray] = []
    seen: set[bytes] = set()
    have = duplicates = sequences = 0
    bar = tqdm(total=n_tokens, desc="hidden states", unit="tok", disable=not progress, leave=False)
    with taps:
        for chunk in text_chunks(texts, chunk_chars, seed):
            tokens = model.encode(chunk)[: model.max_len]
            if len(tokens) <= drop_first:
                continue
            model.run(torch.tensor([tokens], dtype=torch.long, device=model.device))
            sequences += 1
            # L+1 x (t, d)
            per_layer = [s[0, drop_first:].float().cpu().numpy() for s in taps.states]
            keep = []
            for t in range(per_layer[0].shape[0]):
                digest = hashlib.blake2b(
                    b"".join(s[t].tobytes() for s in per_layer), digest_size=16
                ).digest()
                if digest in seen:
                    duplicates += 1
                    continue
                seen.add(digest)
                keep.append(t)
                if have + len(keep) == n_tokens:
                    break
            for layer, s in zip(rows, per_layer, strict=True):
                layer.append(s[keep])
            ids.append(np.asarray(tokens[drop_first:])[keep])
            have += len(keep)
            bar.update(len(keep))
            if have == n_tokens:
                break
    bar.close()
    if have < n_tokens:
        raise SteadyLMError(
            f"the text gives only {have} distinct token positions after --drop-first {drop_first}, "
            f"{n_tokens} needed; give more text or lower --tokens"
        )
    return HiddenStates(
        [np.concatenate(layer) for layer in rows], np.concatenate(ids), sequences, duplicates
    )
