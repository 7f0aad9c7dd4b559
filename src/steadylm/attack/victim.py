"""A classifier under attack: where the trigger goes, how its embedding rows are replaced, and
where each block's output is read, the same way for every model family.

- Trigger ids are inserted after the special tokens the tokenizer puts before a text (BERT's
  [CLS], a Llama BOS when its tokenizer adds one; none for our GPT), so every input of a batch has
  the trigger at the same positions [start, start + L).
- The trigger's embedding rows are replaced by a forward hook on the output of
  `get_input_embeddings()`: it works for Hugging Face BERT/Llama and for our GPTClassifier,
  including a tensor-train embedding, and leaves the position embeddings and whatever follows
  (BERT's embedding LayerNorm) in place, so the attack sees the model as it runs.
- Block outputs are read by a forward hook on the model's list of transformer blocks (BERT
  `encoder.layer`, Llama `model.layers`, our GPT `transformer.h`: the ModuleList holding most of
  the parameters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from steadylm.errors import SteadyLMError
from steadylm.finetune.models import Classifier, GPTClassifier, TextEncoder, pad

if TYPE_CHECKING:
    from steadylm.model.gpt import GPT

NEUTRAL_WORD = "the"  # the neutral trigger is this word repeated: "the the the"


class _Stop(Exception):
    """Raised by the block hook once the wanted layer's output is taken: later blocks are skipped."""


class LanguageModel(nn.Module):
    """A pre-trained steadylm GPT with a classifier's call signature, for the sensitivity profile
    alone (it has no labels to attack): (ids, mask) (B, T) -> final hidden states (B, T, C).
    Attention is causal and padding sits on the right, so the mask is not needed."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.gpt.hidden_states(input_ids)

    def get_input_embeddings(self) -> nn.Module:
        return self.gpt.get_input_embeddings()


@dataclass
class Victim:
    model: Classifier | LanguageModel  # eval mode, parameters frozen
    encoder: TextEncoder
    labels: tuple[str, ...]
    blocks: nn.ModuleList
    start: int  # trigger position: the number of special tokens before the text
    max_length: int  # tokens per input, specials and trigger included
    device: torch.device
    name: str

    @property
    def n_layer(self) -> int:
        return len(self.blocks)

    # ------------------------------------------------------------------ tokens

    def encode(self, texts: Sequence[str], room: int) -> list[list[int]]:
        """Token ids of each text with its special tokens, cut to leave `room` for a trigger."""
        return self.encoder.ids(list(texts), self.max_length - room)

    def with_trigger(self, rows: Sequence[list[int]], trigger: Sequence[int]) -> list[list[int]]:
        s = self.start
        return [r[:s] + list(trigger) + r[s:] for r in rows]

    def batch(
        self, rows: Sequence[list[int]], trigger: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) (B, T) on the device, with `trigger` inserted when given."""
        rows = self.with_trigger(rows, trigger) if trigger is not None else rows
        ids, mask = pad(list(rows), self.encoder.pad_id)
        return ids.to(self.device), mask.to(self.device)

    def neutral_trigger(self, length: int) -> list[int]:
        """The ids of "the the ... the" (`length` words) in this tokenizer, as `length` tokens."""
        ids = self.encoder.tokenizer.encode(
            " ".join([NEUTRAL_WORD] * length), add_special_tokens=False
        ).ids
        return ids if len(ids) == length else [ids[0]] * length

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoder.tokenizer.decode(list(ids)).strip()

    # ------------------------------------------------------------ embeddings

    def embedding_matrix(self) -> torch.Tensor:
        """All token embeddings (V, C), detached; a tensor-train embedding is evaluated row by row
        in chunks rather than assumed to have a weight."""
        emb = self.model.get_input_embeddings()
        weight = getattr(emb, "weight", None)
        if isinstance(weight, torch.Tensor):
            return weight.detach()
        n = emb.num_embeddings  # a TTEmbedding: |V| rows
        assert isinstance(n, int)
        with torch.no_grad():
            return torch.cat(
                [
                    emb(torch.arange(i, min(i + 4096, n), device=self.device))
                    for i in range(0, n, 4096)
                ]
            )

    def token_embeddings(self, ids: Sequence[int]) -> torch.Tensor:
        """Embedding rows of `ids` (L, C), detached."""
        emb = self.model.get_input_embeddings()
        with torch.no_grad():
            return emb(torch.tensor(list(ids), device=self.device)).detach()

    @contextlib.contextmanager
    def substitute(self, trigger_emb: torch.Tensor) -> Iterator[None]:
        """Inside the block, the embedding output at the trigger positions is `trigger_emb` (L, C)
        for every input of the batch (gradients flow to it)."""
        s, n = self.start, trigger_emb.shape[0]

        def hook(module, args, out):  # out (B, T, C)
            out = out.clone()
            out[:, s : s + n] = trigger_emb.to(out.dtype)
            return out

        handle = self.model.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    # ---------------------------------------------------------------- running

    def logits(
        self, ids: torch.Tensor, mask: torch.Tensor, trigger_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, C) logits; with `trigger_emb`, its rows replace the trigger's embeddings."""
        if trigger_emb is None:
            return self.model(ids, mask)
        with self.substitute(trigger_emb):
            return self.model(ids, mask)

    def layer_output(
        self, ids: torch.Tensor, mask: torch.Tensor, trigger_emb: torch.Tensor, layer: int
    ) -> torch.Tensor:
        """The output of block `layer` (1..L) (B, T, C) as a function of `trigger_emb`, with the
        rows of padding zeroed. Later blocks are not run. Attention runs in its plain math form,
        whose backward is itself differentiable (the fused CPU kernel's is not), so that J·v can
        be taken by differentiating a vector-Jacobian product."""
        taken: list[torch.Tensor] = []

        def hook(module, args, output):
            taken.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = self.blocks[layer - 1].register_forward_hook(hook)
        try:
            with self.substitute(trigger_emb), sdpa_kernel(SDPBackend.MATH):
                self.model(ids, mask)
        except _Stop:
            pass
        finally:
            handle.remove()
        return taken[0] * mask.unsqueeze(-1).to(taken[0].dtype)

    # --------------------------------------------------------------- the filter

    def candidate_mask(self, rows: int) -> torch.Tensor:
        """(rows,) bool over the embedding's rows: tokens a trigger may use (`allowed_token`)."""
        tok = self.encoder.tokenizer
        vocab = tok.get_vocab(with_added_tokens=True)
        special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
        # A byte-level BPE or SentencePiece vocabulary marks word starts ("Ġword", "▁word"):
        # a trigger of whole words needs those; a WordPiece one marks continuations ("##ing").
        starts = [m for m in ("Ġ", "▁") if sum(t.startswith(m) for t in vocab) > len(vocab) // 10]
        mask = torch.zeros(rows, dtype=torch.bool)
        for token, i in vocab.items():
            if i < rows and token not in special:
                mask[i] = allowed_token(token, starts[0] if starts else None)
        if not bool(mask.any()):
            raise SteadyLMError(f"{self.name}: no token of its vocabulary can form a trigger")
        return mask.to(self.device)


def allowed_token(token: str, word_start: str | None) -> bool:
    """Whether `token` can be a trigger token: a whole alphabetic word. With a word-start marker
    (`word_start`, e.g. "Ġ"), only tokens that begin a word, the marker stripped; without one,
    no WordPiece continuation ("##x")."""
    if word_start is not None:
        if not token.startswith(word_start):
            return False
        token = token[len(word_start) :]
    elif token.startswith("##"):
        return False
    return token.isascii() and token.isalpha()


def leading_specials(encoder: TextEncoder) -> int:
    """How many special tokens the tokenizer puts before a text (BERT [CLS]: 1; none: 0)."""
    enc = encoder.tokenizer.encode("a")
    n = 0
    for flag in enc.special_tokens_mask:
        if not flag:
            break
        n += 1
    return n


def load_victim(
    path: str | Path, device: torch.device, max_length: int, language_model: bool = False
) -> Victim:
    """A classifier from a `steadylm finetune` run or a Hugging Face sequence-classifier folder,
    frozen (no parameter gradients: the attack differentiates inputs only). With
    `language_model`, a pre-trained steadylm run or checkpoint is also accepted (as a
    `LanguageModel`, for the sensitivity profile)."""
    from steadylm.analysis.models import _blocks
    from steadylm.finetune.export import load_classifier

    p = Path(path)
    if not p.exists():
        raise SteadyLMError(f"{path}: no such folder; give a `steadylm finetune` run or a Hugging "
                            "Face sequence-classifier folder")  # fmt: skip
    if _is_language_model(p):
        if language_model:
            return _language_model(p, device, max_length)
        raise SteadyLMError(
            f"{path}: a pre-trained language model, not a classifier; fine-tune it first "
            "(`steadylm finetune`), or take its sensitivity profile with --profile-only"
        )
    model, encoder, labels = load_classifier(p, device)
    for param in model.parameters():
        param.requires_grad_(False)
    body = model.body
    if isinstance(body, GPTClassifier):
        model_max = body.gpt.config.block_size
    else:
        config = getattr(body, "config", None)
        model_max = getattr(config, "max_position_embeddings", None) or max_length
    return Victim(
        model=model,
        encoder=encoder,
        labels=labels,
        blocks=_blocks(body, p),
        start=leading_specials(encoder),
        max_length=min(max_length, int(model_max)),
        device=device,
        name=str(path),
    )


def _is_language_model(p: Path) -> bool:
    """A steadylm pre-training run or checkpoint (not a fine-tuning run: those have [finetune])."""
    from steadylm import rundir

    if not (p / rundir.CONFIG).is_file() or (p / "classifier").exists():
        return False
    return "[finetune]" not in (p / rundir.CONFIG).read_text(encoding="utf-8")


def _language_model(p: Path, device: torch.device, max_length: int) -> Victim:
    import tokenizers

    from steadylm.model.hf import load_model
    from steadylm.rundir import resolve_checkpoint

    ckpt = resolve_checkpoint(p)
    if not (ckpt / "tokenizer.json").is_file():
        raise SteadyLMError(f"{p}: the checkpoint has no tokenizer.json to encode texts with")
    model = LanguageModel(load_model(ckpt)).to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    tok = tokenizers.Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    encoder = TextEncoder(tok, 0)  # any id pads: attention is causal and padding is zeroed
    return Victim(
        model=model,
        encoder=encoder,
        labels=(),
        blocks=model.gpt.transformer.h,
        start=leading_specials(encoder),
        max_length=min(max_length, model.gpt.config.block_size),
        device=device,
        name=str(p),
    )
