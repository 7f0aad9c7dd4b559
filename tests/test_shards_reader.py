"""Token shards, the sequence reader, and `prepare` from text files to cached shards."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steadylm.config import DataConfig
from steadylm.data import prepare as prepmod
from steadylm.data.corpus import Document, read_user_corpus
from steadylm.data.prepare import encode_documents, load_prepared, prepare
from steadylm.data.reader import SequenceReader, eval_sequences
from steadylm.data.shards import HEADER_BYTES, read_shard, write_shard
from steadylm.data.tokenizer import train_bpe
from steadylm.errors import DataError

# ------------------------------------------------------------------------------------------- shards


@pytest.mark.parametrize("top, dtype", [(65535, np.uint16), (65536, np.uint32), (2**32 - 1, np.uint32)])
def test_shard_round_trip(tmp_path, top, dtype):
    tokens = np.array([0, 1, 7, top, 3], dtype=np.int64)
    write_shard(tmp_path / "s.bin", tokens)
    back = read_shard(tmp_path / "s.bin")
    assert isinstance(back, np.memmap) and back.dtype == dtype
    np.testing.assert_array_equal(back, tokens)
    assert (tmp_path / "s.bin").stat().st_size == HEADER_BYTES + 5 * np.dtype(dtype).itemsize
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]  # no temporary file left


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", np.zeros(0, np.int32))
    assert len(read_shard(tmp_path / "e.bin")) == 0


def test_write_shard_rejects_bad_tokens(tmp_path):
    for bad in (np.array([1, -1]), np.array([2**32]), np.zeros((2, 2), int), np.array([0.5])):
        with pytest.raises(ValueError):
            write_shard(tmp_path / "s.bin", bad)
    assert not (tmp_path / "s.bin").exists()


def test_damaged_shards_are_named(tmp_path):
    f = tmp_path / "s.bin"
    write_shard(f, np.arange(100))
    good = f.read_bytes()
    cases = [
        (good[:-1], r"s\.bin: truncated token shard \(1223 bytes; its header promises 100 tokens = 1224"),
        (good[:500], r"s\.bin: truncated token shard \(500 bytes, shorter than its 1024-byte header\)"),
        (good + b"\0\0", r"s\.bin: corrupt token shard"),
        (b"XXXX" + good[4:], r"s\.bin: not a steadylm token shard \(bad magic number\)"),
        (good[:8] + b"\x03" + good[9:], r"corrupt token shard header \(3 bytes per token"),
        (good[:4] + b"\x09" + good[5:], r"token shard format version 9"),
    ]
    for data, match in cases:
        f.write_bytes(data)
        with pytest.raises(DataError, match=match):
            read_shard(f)
    with pytest.raises(DataError, match="no such token shard"):
        read_shard(tmp_path / "missing.bin")


# ------------------------------------------------------------------------------------------- reader

BLOCK = 4


def stream(n_sequences):
    """Tokens 0..N so that a window's first token tells which sequence it is."""
    return np.arange(n_sequences * BLOCK + 1, dtype=np.uint32)


def indices(x):
    return (x[:, 0] // BLOCK).tolist()


def test_windows_and_targets():
    tokens = stream(10)
    x, y = SequenceReader(tokens, BLOCK, seed=0).next_batch(3)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (3, BLOCK)
    for row, target in zip(x, y):
        i = int(row[0]) // BLOCK
        assert row.tolist() == list(range(i * BLOCK, i * BLOCK + BLOCK))
        assert target.tolist() == (row + 1).tolist()


def test_n_sequences_and_too_little_data():
    assert SequenceReader(np.arange(41), 4, 0).n_sequences == 10
    assert SequenceReader(np.arange(40), 4, 0).n_sequences == 9  # the last window needs one more target
    with pytest.raises(DataError, match="has 4 tokens; need at least block_size\\+1 = 5"):
        SequenceReader(np.arange(4), 4, 0)


def test_one_epoch_visits_every_sequence_once():
    reader = SequenceReader(stream(23), BLOCK, seed=5)
    seen = []
    while reader.epoch == 0:
        seen += indices(reader.next_batch(1)[0])
    assert sorted(seen) == list(range(23)) and seen != sorted(seen)
    assert (reader.epoch, reader.position) == (1, 0)


def test_batches_span_epoch_boundaries():
    reader = SequenceReader(stream(10), BLOCK, seed=1)
    drawn = [indices(reader.next_batch(4)[0]) for _ in range(5)]  # 20 sequences = two epochs exactly
    flat = sum(drawn, [])
    assert sorted(flat[:10]) == sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # each epoch has its own order
    assert (reader.epoch, reader.position) == (2, 0)
    big = SequenceReader(stream(3), BLOCK, seed=1).next_batch(7)[0]  # a batch longer than an epoch
    assert sorted(indices(big)[:3]) == sorted(indices(big)[3:6]) == [0, 1, 2]


def test_ranks_are_disjoint_and_their_union_is_the_global_batch():
    tokens = stream(13)
    single = SequenceReader(tokens, BLOCK, seed=3)
    ranks = [SequenceReader(tokens, BLOCK, seed=3) for _ in range(4)]
    for _ in range(6):  # 6 x 8 sequences: crosses several epoch boundaries
        x, y = single.next_batch(8)
        parts = [r.next_batch(8, rank=k, world_size=4) for k, r in enumerate(ranks)]
        assert all(p[0].shape == (2, BLOCK) for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert all(r.state_dict() == single.state_dict() for r in ranks)
    with pytest.raises(ValueError, match="multiple of world_size"):
        single.next_batch(6, rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank 4 is not in"):
        single.next_batch(8, rank=4, world_size=4)


def test_resume_continues_the_same_stream():
    tokens = stream(11)
    reader = SequenceReader(tokens, BLOCK, seed=7)
    for _ in range(2):
        reader.next_batch(4)
    state = json.loads(json.dumps(reader.state_dict()))  # plain ints survive any serialiser
    assert state == {"epoch": 0, "position": 8, "seed": 7, "block_size": BLOCK, "n_sequences": 11}
    expected = [reader.next_batch(4)[0] for _ in range(5)]  # crosses into epochs 1 and 2
    resumed = SequenceReader(tokens, BLOCK, seed=999)  # the checkpoint's seed wins
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.next_batch(4)[0], e) for e in expected)
    assert resumed.state_dict() == reader.state_dict()


def test_resume_on_different_data_is_refused():
    state = SequenceReader(stream(11), BLOCK, seed=7).state_dict()
    for tokens, block in ((stream(12), BLOCK), (np.arange(45), 5)):
        with pytest.raises(DataError, match="changed since the checkpoint"):
            SequenceReader(tokens, block, seed=7).load_state_dict(state)


def test_seeds_give_different_orders():
    orders = {tuple(indices(SequenceReader(stream(50), BLOCK, seed=s).next_batch(50)[0])) for s in range(4)}
    assert len(orders) == 4


def test_eval_sequences_are_the_first_windows_in_order():
    tokens = stream(20)
    batches = list(eval_sequences(tokens, BLOCK, max_sequences=7, batch_size=3))
    assert [indices(x) for x, _ in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(torch.equal(y, x + 1) for x, y in batches)
    shares = [sum((indices(x) for x, _ in eval_sequences(tokens, BLOCK, 7, 2, rank=r, world_size=3)), [])
              for r in range(3)]  # fmt: skip
    assert sorted(sum(shares, [])) == list(range(7)) and shares[1] == [1, 4]
    assert sum(len(x) for x, _ in eval_sequences(tokens, BLOCK, max_sequences=100)) == 20
    with pytest.raises(DataError, match="validation data has 3 tokens"):
        list(eval_sequences(np.arange(3), BLOCK, 5))


# ------------------------------------------------------------------------------------------- prepare


@pytest.fixture
def corpus(tmp_path, make_text, monkeypatch):
    """A folder of 12 generated documents (.txt and .jsonl), and a private cache."""
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(8):
        (folder / f"doc{i}.txt").write_text(make_text(i, 300))
    records = [{"text": make_text(100 + i, 200)} for i in range(4)]
    (folder / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_prepare_builds_shards_and_meta(corpus):
    data = prepare(DataConfig(path=[str(corpus)], tokenizer="bpe:300", val_fraction=0.25), progress=False)
    meta = data.meta
    originals = {doc.name: doc.text for doc in read_user_corpus(str(corpus))}
    assert data.dir.parent.name == "datasets" and data.dir.name.startswith("user-bpe300-")
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"]) == ("bpe:300", 300, data.tokenizer.eot_id)
    assert len(meta["train_documents"]) == 9 and len(meta["val_documents"]) == 3
    assert (meta["n_train_tokens"], meta["n_val_tokens"]) == (len(data.train), len(data.val))
    assert data.train.dtype == np.uint16
    # <|endoftext|> starts every document, and the stream decodes back to the documents in order.
    for tokens, names in ((data.train, meta["train_documents"]), (data.val, meta["val_documents"])):
        assert tokens[0] == data.tokenizer.eot_id and (tokens == data.tokenizer.eot_id).sum() == len(names)
        assert data.tokenizer.decode(tokens).split("<|endoftext|>")[1:] == [originals[n] for n in names]
    assert json.loads((data.dir / "meta.json").read_text()) == meta
    assert sorted(p.name for p in data.dir.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]


def test_prepare_reuses_the_cache_until_the_data_changes(corpus, monkeypatch):
    cfg = DataConfig(path=str(corpus), tokenizer="bpe:300")
    first = prepare(cfg, progress=False)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a cached dataset must not be tokenized again")

    with monkeypatch.context() as patch:
        patch.setattr(prepmod, "build_tokenizer", no_rebuild)
        again = prepare(cfg, progress=False)
    assert again.dir == first.dir and np.array_equal(again.train, first.train)
    assert load_prepared(first.dir).meta == first.meta
    # Anything the result depends on gives a new folder.
    others = [DataConfig(path=str(corpus), tokenizer="bpe:310"), DataConfig(path=str(corpus), tokenizer="bpe:300",
              val_fraction=0.2)]  # fmt: skip
    (corpus / "doc0.txt").write_text("changed text " * 50)
    others.append(cfg)
    dirs = {prepare(c, progress=False).dir for c in others}
    assert len(dirs) == 3 and first.dir not in dirs


def test_interrupted_prepare_leaves_nothing(corpus, monkeypatch, tmp_path):
    def crash(path, tokens):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepmod, "write_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(DataConfig(path=str(corpus), tokenizer="bpe:300"), progress=False)
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []


def test_load_prepared_checks_its_files(corpus):
    data = prepare(DataConfig(path=str(corpus), tokenizer="bpe:300"), progress=False)
    with pytest.raises(DataError, match="not a prepared dataset"):
        load_prepared(data.dir.parent)
    meta = dict(data.meta, n_train_tokens=data.meta["n_train_tokens"] + 1)
    (data.dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="token counts differ from meta.json"):
        load_prepared(data.dir)


def test_prepare_rejects_a_bad_tokenizer_before_reading(tmp_path):
    with pytest.raises(DataError, match="choose 'gpt2' or 'bpe:N'"):
        prepare(DataConfig(path=str(tmp_path / "missing"), tokenizer="bpe:9"), progress=False)


def test_reader_on_prepared_data(corpus):
    data = prepare(DataConfig(path=str(corpus), tokenizer="bpe:300"), progress=False)
    x, y = SequenceReader(data.train, 16, seed=0).next_batch(4)
    assert x.shape == (4, 16) and int(x.max()) < 300 and torch.equal(x[:, 1:], y[:, :-1])


UNITS = ["ka", "lo", " ", "\n", "\t", ".", "'s", "é"]


@pytest.fixture(scope="module")
def small_bpe():
    """Trained on the units the property test draws from, so it has merges across spaces and newlines."""
    rng = np.random.default_rng(0)
    return train_bpe(["".join(rng.choice(UNITS, 5000))], 300)


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.lists(st.sampled_from(UNITS)).map("".join), min_size=1, max_size=4))
def test_long_documents_encode_in_pieces_exactly(small_bpe, texts):
    """Cutting long documents into pieces (for parallel encoding) never changes their ids."""
    docs = [Document(str(i), t) for i, t in enumerate(texts)]
    expected = sum(([small_bpe.eot_id] + small_bpe.encode(t) for t in texts), [])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prepmod, "PIECE_CHARS", 3)
        patch.setattr(prepmod, "BATCH_CHARS", 5)
        assert encode_documents(small_bpe, docs).tolist() == expected
