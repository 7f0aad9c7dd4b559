"""Collect every layer's hidden states of a model over a text sample.

Convention (the same for every model): hidden state 0 is the embedding output, i.e. the input
of the first block (for GPT-2 wte + wpe, for Llama the token embedding, for BERT the embeddings
after their LayerNorm); hidden state l (1..L) is the output of block l. All of them are taken
*before* any final norm (GPT-2's ln_f, Llama's norm), so each consecutive pair is exactly one
block. (`transformers`' own `hidden_states[-1]` is after the final norm in language models, which
makes its last pair mix a block with a normalisation.) They are read with forward hooks
(`steadylm.model.taps`), so the model's numerics are untouched.

Text: as in the reference protocol of Razzhigaev et al., the text is cut into chunks of
`chunk_chars` characters, the chunks are shuffled with a fixed seed, and each is tokenised on its
own with the model's special tokens (BOS for Llama, [CLS] ... [SEP] for BERT, none for steadylm
models) and run as one sequence. The first `drop_first` tokens of every sequence are never used.
At least `min_chunks` chunks form the pool, and more are added until both samples below can be
filled (or the text runs out).

Two samples are drawn from the pool by token ids alone, before any forward pass
(`steadylm.analysis.sampling`): the position sample (`states`) and the ID sample (`id_states`);
only the sequences holding a selected position are then run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from steadylm.analysis.models import AnalysisModel
from steadylm.analysis.sampling import select, text_chunks
from steadylm.model.taps import BlockTaps


@dataclass
class HiddenStates:
    states: list[np.ndarray]  # L+1 arrays (n, d) float32: the position sample (module doc)
    ids: np.ndarray  # (n,) token id of each row
    positions: np.ndarray  # (n,) position of each row in its sequence
    id_states: list[np.ndarray]  # L+1 arrays (m, d) float32: the ID sample
    id_ids: np.ndarray  # (m,) token id of each row of the ID sample
    id_sample: str  # one of ID_SAMPLES
    chunks: int  # chunks in the pool (all of them tokenised)
    sequences: int  # sequences run (the pool's chunks holding a selected position)


@torch.no_grad()
def collect(
    model: AnalysisModel,
    texts: list[str],
    n_tokens: int = 4096,
    drop_first: int = 0,
    id_sample: str = "token",
    min_chunks: int = 128,
    chunk_chars: int = 512,
    seed: int = 0,
    progress: bool = True,
) -> HiddenStates:
    """Hidden states 0..L of the position and ID samples (module doc)."""
    from tqdm.auto import tqdm

    pool: list[list[int]] = []

    def tokenised():
        for chunk in text_chunks(texts, chunk_chars, seed):
            pool.append(model.encode(chunk)[: model.max_len])
            yield pool[-1]

    sel = select(tokenised(), n_tokens, id_sample, drop_first, min_chunks, model.causal, seed)
    wanted: dict[int, set[int]] = {}  # sequence -> positions used by either sample
    for s, t in sel.position_rows + sel.id_rows:
        wanted.setdefault(s, set()).add(t)
    taps = BlockTaps(model.blocks)
    got: dict[tuple[int, int], list[np.ndarray]] = {}  # (sequence, position) -> L+1 states (d,)
    with taps:
        for s in tqdm(
            sorted(wanted), desc="hidden states", unit="seq", disable=not progress, leave=False
        ):
            model.run(torch.tensor([pool[s]], dtype=torch.long, device=model.device))
            ts = sorted(wanted[s])
            per_layer = []  # L+1 x (len(ts), d)
            for x in taps.states:
                assert x is not None  # the forward pass ran every tapped block
                per_layer.append(x[0, ts].float().cpu().numpy())
            for i, t in enumerate(ts):
                got[(s, t)] = [x[i] for x in per_layer]

    def stack(rows):
        return [np.stack([got[r][layer] for r in rows]) for layer in range(len(taps.states))]

    states = stack(sel.position_rows)
    return HiddenStates(
        states=states,
        ids=np.array([pool[s][t] for s, t in sel.position_rows]),
        positions=np.array([t for _, t in sel.position_rows]),
        id_states=states if id_sample == "all" else stack(sel.id_rows),
        id_ids=np.array([pool[s][t] for s, t in sel.id_rows]),
        id_sample=id_sample,
        chunks=sel.chunks,
        sequences=len(wanted),
    )
