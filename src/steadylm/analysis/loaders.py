"""Find and read the token embedding of any checkpoint, without loading the model.

Accepted paths:

- a steadylm run folder (`RUN/checkpoints/step_*`): its latest checkpoint whose manifest verifies;
- a steadylm checkpoint folder (`model.safetensors` + `config.toml`): `transformer.wte.weight`,
  or, for a tensor-train embedding (`model.embedding = "tt"`), the matrix reconstructed from the
  stored cores `transformer.wte.cores.K` and the shape and rank in `config.toml`;
- a Hugging Face folder (`config.json` + `*.safetensors` or `pytorch_model.bin`);
- a `.safetensors` file;
- a `.gguf` file: only `token_embd.weight` is read (memory-mapped) and dequantised.

The embedding is found by name (`wte`, `embed_tokens`, `word_embeddings`, `tok_embeddings`,
`token_embd`, `embed_in`, `shared`) unless a tensor name is given. Safetensors files are read
tensor by tensor, so only the embedding's bytes are loaded.

Real vocabulary rows (TEV leaves padding rows out): the tokenizer's size (largest token id + 1)
when a tokenizer is there, capped by the rows; else `[model] vocab_size` (steadylm) or
`config.vocab_size` (Hugging Face), capped by the rows; else all rows. For steadylm checkpoints
this is the rule the trainer uses for its logged `tev_mean`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from steadylm.errors import SteadyLMError
from steadylm.rundir import require_latest_checkpoint

EMBEDDING_NAMES = (
    "wte.weight",  # GPT-2, steadylm
    "embed_tokens.weight",  # Llama, Mistral, Qwen, OPT, ...
    "word_embeddings.weight",  # BERT, BLOOM
    "tok_embeddings.weight",  # Meta's Llama layout
    "token_embd.weight",  # GGUF
    "embed_in.weight",  # GPT-NeoX, Pythia
    "shared.weight",  # T5
)
GGUF_EMBEDDING = "token_embd.weight"
FORMATS = (
    "a steadylm run or checkpoint folder, a Hugging Face folder (config.json + weights), "
    "a .safetensors file or a .gguf file"
)


@dataclass
class Embedding:
    """A token embedding as read from a checkpoint, with what is known about its vocabulary."""

    path: Path
    format: str  # "steadylm" | "huggingface" | "safetensors" | "gguf"
    tensor: str
    dtype: str  # as stored: "F32", "BF16", "Q8_0", "torch.float16", ...
    weight: torch.Tensor  # (rows, d_model), fp32, CPU
    vocab_size: int  # real vocabulary rows, the ones TEV is computed over
    vocab_note: str  # where vocab_size comes from
    decode: Callable[[int], str] | None = None  # text of one token id, when a tokenizer is there
    model: str | None = None  # architecture, when known
    step: int | None = None  # training step, for steadylm checkpoints
    checkpoint: Path | None = None  # the checkpoint folder read, when `path` is a run folder

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    @property
    def d_model(self) -> int:
        return self.weight.shape[1]


def load_embedding(path: str | Path, tensor: str | None = None) -> Embedding:
    """Read the token embedding at `path` (see the module doc); `tensor` names it explicitly."""
    p = Path(path)
    if not p.exists():
        raise SteadyLMError(f"{path}: no such file or folder; give {FORMATS}")
    if p.is_dir():
        if (p / "checkpoints").is_dir():
            return _steadylm(require_latest_checkpoint(p), tensor, p)
        if (p / "model.safetensors").is_file() and (p / "config.toml").is_file():
            return _steadylm(p, tensor, p)
        if (p / "config.json").is_file():
            return _huggingface(p, tensor)
        raise SteadyLMError(
            f"{path}: a folder with neither config.toml + model.safetensors nor config.json; give {FORMATS}"
        )
    if p.suffix == ".safetensors":
        return _safetensors_file(p, tensor)
    if p.suffix == ".gguf" or _magic(p) == b"GGUF":
        return _gguf(p, tensor)
    raise SteadyLMError(
        f"{path}: unsupported file type {p.suffix or '(no suffix)'!r}; give {FORMATS}"
    )


def _magic(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read(4)


# --------------------------------------------------------------------------- steadylm


def _steadylm(ckpt: Path, tensor: str | None, given: Path) -> Embedding:
    import tomllib

    index = _safetensors_index([ckpt / "model.safetensors"])
    model_cfg = tomllib.loads((ckpt / "config.toml").read_text()).get("model", {})
    if tensor is None and model_cfg.get("embedding") == "tt":
        name, dtype = "transformer.wte (TT cores, reconstructed)", "F32"
        weight = _tt_matrix(ckpt, index)
    else:
        name = _pick(index, tensor, ckpt / "model.safetensors")
        weight, dtype = _read_safetensors(index, name)
    cfg_vocab = model_cfg.get("vocab_size")
    decode, n_tok = _tokenizer_json(ckpt / "tokenizer.json")
    vocab, note = _vocab_rows(
        weight.shape[0], n_tok, "tokenizer.json", cfg_vocab, "[model] vocab_size"
    )
    manifest = ckpt / "manifest.json"
    step = json.loads(manifest.read_text()).get("step") if manifest.is_file() else None
    return Embedding(given, "steadylm", name, dtype, weight, vocab, note, decode, "gpt", step, ckpt)


def _tt_matrix(ckpt: Path, index) -> torch.Tensor:
    """The (V, d) matrix of a TT checkpoint, from its cores and config (fp32, CPU)."""
    import tomllib

    from steadylm.config import config_from_dict
    from steadylm.model.tt_embedding import CORE_PREFIX, densify_state_dict

    try:
        cfg = config_from_dict(tomllib.loads((ckpt / "config.toml").read_text())).model
    except SteadyLMError as e:
        raise SteadyLMError(f"{ckpt / 'config.toml'}: {e}") from None
    cores = {n: _read_safetensors(index, n)[0] for n in index if n.startswith(CORE_PREFIX)}
    if not cores:
        raise SteadyLMError(
            f"{ckpt}: config.toml says model.embedding='tt' but model.safetensors has no "
            f"{CORE_PREFIX}* tensors"
        )
    try:
        return densify_state_dict(cfg, cores)["transformer.wte.weight"]
    except RuntimeError as e:  # cores that do not fit the config's shape and rank
        first = str(e).splitlines()[0]
        raise SteadyLMError(f"{ckpt}: the TT cores do not match config.toml ({first})") from None


# ------------------------------------------------------------------------ Hugging Face


def _huggingface(folder: Path, tensor: str | None) -> Embedding:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise SteadyLMError(f"{folder / 'config.json'}: unreadable ({e})") from None
    files = sorted(folder.glob("*.safetensors"))
    if files:
        index = _safetensors_index(files)
        name = _pick(index, tensor, folder)
        weight, dtype = _read_safetensors(index, name)
    elif (folder / "pytorch_model.bin").is_file():
        weight, dtype, name = _read_torch_bin(folder / "pytorch_model.bin", tensor)
    else:
        raise SteadyLMError(
            f"{folder}: config.json but no *.safetensors or pytorch_model.bin weights"
        )
    decode, n_tok = _tokenizer_json(folder / "tokenizer.json")
    source = "tokenizer.json"
    if decode is None:
        decode, n_tok = _vocab_txt(folder / "vocab.txt")
        source = "vocab.txt"
    cfg_vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    vocab, note = _vocab_rows(weight.shape[0], n_tok, source, cfg_vocab, "config.vocab_size")
    return Embedding(
        folder, "huggingface", name, dtype, weight, vocab, note, decode, config.get("model_type")
    )


def _read_torch_bin(path: Path, tensor: str | None) -> tuple[torch.Tensor, str, str]:
    # mmap: only the pages of the tensor we read come from disk.
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    index = {
        k: (None, tuple(v.shape), str(v.dtype))
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }
    name = _pick(index, tensor, path)
    return state[name].float().clone(), str(state[name].dtype), name


# ------------------------------------------------------------------------- safetensors


def _safetensors_file(path: Path, tensor: str | None) -> Embedding:
    index = _safetensors_index([path])
    name = _pick(index, tensor, path)
    weight, dtype = _read_safetensors(index, name)
    decode, n_tok = _tokenizer_json(path.parent / "tokenizer.json")
    vocab, note = _vocab_rows(weight.shape[0], n_tok, "tokenizer.json beside it", None, "")
    return Embedding(path, "safetensors", name, dtype, weight, vocab, note, decode)


def _safetensors_index(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """name -> (file, shape, dtype), from the headers only."""
    from safetensors import safe_open

    index = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():  # noqa: SIM118 (safe_open is not a dict: keys() is its API)
                    sl = st.get_slice(k)
                    index[k] = (f, tuple(sl.get_shape()), sl.get_dtype())
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise SteadyLMError(f"{f}: not a readable safetensors file ({e})") from None
    return index


def _read_safetensors(index, name: str) -> tuple[torch.Tensor, str]:
    from safetensors import safe_open

    f, _, dtype = index[name]
    with safe_open(str(f), framework="pt") as st:
        return st.get_tensor(name).float(), dtype


# -------------------------------------------------------------------------------- GGUF


def _gguf(path: Path, tensor: str | None) -> Embedding:
    import gguf

    try:
        reader = gguf.GGUFReader(path)  # memory-maps the file; tensor data stay on disk until read
    except Exception as e:  # the reader raises ValueError/struct errors on a bad file
        raise SteadyLMError(f"{path}: not a readable GGUF file ({e})") from None
    tensors = {t.name: t for t in reader.tensors}
    # GGUF lists dimensions innermost first; report them in PyTorch order.
    index = {
        n: (None, tuple(int(x) for x in reversed(t.shape)), t.tensor_type.name)
        for n, t in tensors.items()
    }
    name = _pick(index, tensor, path, names=(GGUF_EMBEDDING,))
    t = tensors[name]
    # np.array copies: unquantised tensors come back as views of the read-only memory map.
    weight = torch.from_numpy(
        np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    )
    weight = weight.reshape(index[name][1])
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    decode = None
    if tokens:
        decode = _gguf_decoder(tokens, _gguf_field(reader, "tokenizer.ggml.model"))
    vocab, note = _vocab_rows(
        weight.shape[0], len(tokens) if tokens else None, "tokenizer.ggml.tokens", None, ""
    )
    return Embedding(
        path,
        "gguf",
        name,
        t.tensor_type.name,
        weight,
        vocab,
        note,
        decode,
        _gguf_field(reader, "general.architecture"),
    )


def _gguf_field(reader, key: str):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def _gguf_decoder(tokens: list[str], model: str | None) -> Callable[[int], str]:
    if model == "gpt2":  # byte-level BPE: each byte is stored as a printable stand-in character
        table = _byte_level_table()
        return lambda i: _bytes_text(tokens[i], table)
    if model == "llama":  # SentencePiece: U+2581 marks a space, <0xNN> a raw byte
        return lambda i: tokens[i].replace("\u2581", " ")
    return lambda i: tokens[i]


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other bytes
    are shifted to code points 256, 257, ... in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    table.update(
        {chr(256 + i): b for i, b in enumerate(b for b in range(256) if b not in table.values())}
    )
    return table


def _bytes_text(token: str, table: dict[str, int]) -> str:
    if all(c in table for c in token):
        return bytes(table[c] for c in token).decode("utf-8", errors="replace")
    return token  # special tokens such as <|im_start|> are stored as plain text


# -------------------------------------------------------------------------- shared bits


def _pick(
    index: dict, tensor: str | None, where: Path, names: tuple[str, ...] = EMBEDDING_NAMES
) -> str:
    """The embedding's name: `tensor` if given, else the first name pattern that matches."""
    matrices = [n for n, (_, shape, _) in index.items() if len(shape) == 2]
    name: str | None
    if tensor is not None:
        if tensor not in index:
            raise SteadyLMError(
                f"--tensor {tensor}: no such tensor in {where}; 2-D tensors: {_listing(matrices)}"
            )
        name = tensor
    else:
        name = next((n for pat in names for n in index if n == pat or n.endswith("." + pat)), None)
        if name is None:
            raise SteadyLMError(
                f"{where}: no token-embedding tensor (looked for names ending in {', '.join(names)}); "
                f"pass --tensor NAME, one of the 2-D tensors: {_listing(matrices)}"
            )
    shape = index[name][1]
    if len(shape) != 2:
        raise SteadyLMError(
            f"{where}: tensor {name} has shape {shape}; TEV needs a 2-D (vocabulary x d_model) matrix"
        )
    return name


def _listing(names: list[str], limit: int = 8) -> str:
    if not names:
        return "(none)"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _tokenizer_json(path: Path) -> tuple[Callable[[int], str] | None, int | None]:
    if not path.is_file():
        return None, None
    import tokenizers

    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception:  # an unreadable tokenizer only costs the decoded names
        return None, None
    n = max(tok.get_vocab(with_added_tokens=True).values()) + 1

    def decode(i: int) -> str:
        # decode() turns byte-level pieces back into text; special tokens decode to "" otherwise.
        return tok.decode([i], skip_special_tokens=False) or (tok.id_to_token(i) or "")

    return decode, n


def _vocab_txt(path: Path) -> tuple[Callable[[int], str] | None, int | None]:
    if not path.is_file():
        return None, None
    tokens = path.read_text(encoding="utf-8").splitlines()
    return (lambda i: tokens[i] if i < len(tokens) else ""), len(tokens)


def _vocab_rows(
    rows: int, n_tok: int | None, tok_source: str, cfg_vocab: int | None, cfg_source: str
) -> tuple[int, str]:
    if n_tok:
        used = min(rows, n_tok)
        note = f"{tok_source} has {n_tok} tokens"
    elif cfg_vocab:
        used = min(rows, int(cfg_vocab))
        note = f"{cfg_source} = {cfg_vocab}"
    else:
        return rows, "no tokenizer or config: all rows"
    if used < rows:
        note += f"; rows {used}..{rows - 1} are padding, left out"
    return used, note
