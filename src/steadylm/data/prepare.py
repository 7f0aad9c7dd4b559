"""Turn a `DataConfig` into tokenized train/validation shards, cached by what they were built from.

A prepared dataset is a folder `cache_dir()/datasets/<source>-<tokenizer>-<key>` holding `train.bin`
and `val.bin` (token shards), `tokenizer.json` and `meta.json`. The key hashes everything the result
depends on, so asking again for the same data returns the folder at once, and changing a file, the
tokenizer, the split or the text field builds a new one. The folder is built under a temporary name and
renamed when complete, so an interrupted prepare leaves nothing half-written.

Packing: every document is preceded by `<|endoftext|>` (as GPT-2's training data was), and the
documents of a split are concatenated in order. The stream therefore starts with `<|endoftext|>`, and
the model always sees a document boundary as that token followed by the new document.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from steadylm.config import DataConfig
from steadylm.data.cache import cache_dir
from steadylm.data.corpus import (
    CORPUS_NAMES,
    Document,
    corpus_sources,
    named_user_files,
    read_corpus,
    split_documents,
)
from steadylm.data.shards import read_shard, write_shard
from steadylm.data.tokenizer import Tokenizer, bpe_size, build_tokenizer
from steadylm.errors import DataError
from steadylm.fsutil import atomic_dir, atomic_write

# Bump when the folder's layout or the packing changes, so older folders are not reused.
FORMAT_VERSION = 1
# Long documents are encoded in pieces of about this many characters, in parallel.
PIECE_CHARS = 1 << 20
BATCH_CHARS = 8 << 20


@dataclass
class PreparedData:
    """A prepared dataset: token streams as read-only memmaps, its tokenizer and its meta.json."""

    dir: Path
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    meta: dict


def prepare(data_cfg: DataConfig, progress: bool = True) -> PreparedData:
    """Build, or reuse, the prepared dataset for `data_cfg`.

    `data_cfg.path` entries that name a corpus ("default", "wide") stand for it; the others are the
    user's files and folders (both may be mixed). "bpe:N" tokenizers are trained on the training split only.
    """
    bpe_size(data_cfg.tokenizer)  # reject a bad tokenizer name before any work
    paths = [data_cfg.path] if isinstance(data_cfg.path, str) else list(data_cfg.path)
    names = list(dict.fromkeys(p for p in paths if p in CORPUS_NAMES))
    files = [p for p in paths if p not in CORPUS_NAMES]
    sources = _sources(names, named_user_files(files) if files else [])
    recipe = {
        "format": FORMAT_VERSION,
        "sources": sources,
        "tokenizer": data_cfg.tokenizer,
        "val_fraction": data_cfg.val_fraction,
        "text_field": data_cfg.text_field,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    label = "+".join(names) if names and not files else "user"
    folder = cache_dir() / "datasets" / f"{label}-{data_cfg.tokenizer.replace(':', '')}-{key}"
    if (folder / "meta.json").is_file():
        return load_prepared(folder)

    docs = read_corpus(paths, data_cfg.text_field, progress)
    train_docs, val_docs = split_documents(docs, data_cfg.val_fraction)
    tok = build_tokenizer(data_cfg.tokenizer, (doc.text for doc in train_docs))
    train = encode_documents(tok, train_docs, progress, "train")
    val = encode_documents(tok, val_docs, progress, "val")
    meta = {
        **recipe,
        "tokenizer": tok.name,
        "tokenizer_fingerprint": tok.fingerprint(),
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "packing": "<|endoftext|> before every document",
        "n_train_tokens": int(train.size),
        "n_val_tokens": int(val.size),
        "train_documents": [doc.name for doc in train_docs],
        "val_documents": [doc.name for doc in val_docs],
    }
    with atomic_dir(folder) as tmp:
        tok.save(tmp / "tokenizer.json")
        write_shard(tmp / "train.bin", train)
        write_shard(tmp / "val.bin", val)
        with atomic_write(tmp / "meta.json") as f:
            f.write(json.dumps(meta, indent=1, ensure_ascii=False).encode())
    return load_prepared(folder)


def load_prepared(dir: Path | str) -> PreparedData:
    """Open a prepared dataset folder, checking that its files agree with its meta.json."""
    folder = Path(dir)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(
            f"{folder}: not a prepared dataset (meta.json: {e}); run `steadylm prepare`"
        ) from None
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(
            f"{folder}: dataset format {meta.get('format')}, this steadylm reads {FORMAT_VERSION}"
        )
    tok = Tokenizer.load(folder / "tokenizer.json")
    if tok.fingerprint() != meta["tokenizer_fingerprint"]:
        raise DataError(
            f"{folder}: tokenizer.json does not match meta.json; delete the folder and prepare again"
        )
    train, val = read_shard(folder / "train.bin"), read_shard(folder / "val.bin")
    if (train.size, val.size) != (meta["n_train_tokens"], meta["n_val_tokens"]):
        raise DataError(
            f"{folder}: token counts differ from meta.json; delete the folder and prepare again"
        )
    return PreparedData(folder, train, val, tok, meta)


def _sources(names: list[str], files: list[tuple[Path, str]]) -> list[dict]:
    """What the data is made of, precisely enough that any change gives a new dataset key; a user
    file's document name is part of it, since the split goes by name."""
    sources = [source for name in names for source in corpus_sources(name)]
    for file, doc_name in files:
        stat = file.stat()
        sources.append(
            {
                "file": str(file.resolve()),
                "name": doc_name,
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
        )
    return sources


def encode_documents(
    tok: Tokenizer, docs: list[Document], progress: bool = False, desc: str = ""
) -> np.ndarray:
    """The packed token stream of `docs`: `<|endoftext|>` then the document's ids, for each document.

    uint16 when the vocabulary fits, else uint32.
    """
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    pieces = [
        (i == 0, piece) for doc in docs for i, piece in enumerate(_pieces(doc.text, PIECE_CHARS))
    ]
    parts = []
    with tqdm(total=sum(len(p) for _, p in pieces), desc=f"tokenizing {desc}".strip(), unit="char",
              unit_scale=True, disable=not progress) as bar:  # fmt: skip
        for batch in _batches(pieces, BATCH_CHARS):
            for (starts_document, _), ids in zip(
                batch, tok.encode_batch([p for _, p in batch]), strict=True
            ):
                if starts_document:
                    parts.append(np.array([tok.eot_id], dtype))
                parts.append(np.array(ids, dtype))
            bar.update(sum(len(p) for _, p in batch))
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


# GPT-2's pre-tokenizer always splits between a non-space character and a newline: only its whitespace
# patterns match a newline, and they never take the character before. The whitespace run starting
# there is split the same way with or without the text before it, so pieces cut at such points encode
# to exactly the ids of the whole text. (Cutting after the newline would not do: a run like " \n" at
# the end of a piece is one token, but two when a letter follows.)
_CUT = re.compile(r"(?<=\S)\n")


def _pieces(text: str, size: int) -> Iterator[str]:
    """`text` in consecutive pieces of at least `size` characters (the last may be shorter)."""
    start = 0
    while len(text) - start > size:
        cut = _CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.start()]
        start = cut.start()
    yield text[start:]


def _batches(pieces: list[tuple[bool, str]], size: int) -> Iterator[list[tuple[bool, str]]]:
    """Consecutive runs of pieces of about `size` characters in total."""
    batch, chars = [], 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece[1])
        if chars >= size:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch
