"""Corpora: the user's files and their errors, the train/validation split, the default corpus."""

import json
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import write_corpus
from steadylm.data import cache
from steadylm.data.corpus import (
    Document,
    default_corpus,
    named_user_files,
    read_user_corpus,
    split_documents,
)
from steadylm.errors import DataError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_txt_file_is_one_document(tmp_path):
    (tmp_path / "a.txt").write_text("héllo\nworld\n", encoding="utf-8")
    assert read_user_corpus([str(tmp_path / "a.txt")]) == [Document("a.txt", "héllo\nworld\n")]


def test_utf8_byte_order_mark_is_dropped(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffhello".encode("utf-8"))
    assert read_user_corpus(str(tmp_path / "a.txt"))[0].text == "hello"


def test_jsonl_record_per_document(tmp_path):
    f = tmp_path / "d.jsonl"
    write_jsonl(f, [{"body": "one", "id": 1}, {"body": "two\u2028lines"}])
    f.write_text(f.read_text() + "\n")  # blank lines are skipped
    docs = read_user_corpus([str(f)], text_field="body")
    assert docs == [Document("d.jsonl:1", "one"), Document("d.jsonl:2", "two\u2028lines")]


def test_parquet_row_per_document(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["alpha", None, "gamma"], "n": [1, 2, 3]}), f)
    assert read_user_corpus([str(f)]) == [Document("d.parquet:0", "alpha"), Document("d.parquet:2", "gamma")]


def test_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zed")
    (tmp_path / "a.txt").write_text("ay")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "sea"}])
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("skipped")
    (tmp_path / "notes.md").write_text("not a supported type, skipped inside folders")
    docs = read_user_corpus([str(tmp_path)])
    assert [d.text for d in docs] == ["ay", "zed", "sea"]
    root = tmp_path.name
    assert [d.name for d in docs] == [f"{root}/a.txt", f"{root}/b/z.txt", f"{root}/c.jsonl:1"]
    assert [f for f, _ in named_user_files([str(tmp_path)])] == [tmp_path / "a.txt", tmp_path / "b" / "z.txt",
                                                                 tmp_path / "c.jsonl"]


def test_empty_documents_are_dropped_but_no_text_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="no text found"):
        read_user_corpus([str(tmp_path)])
    (tmp_path / "real.txt").write_text("words")
    assert [d.text for d in read_user_corpus([str(tmp_path)])] == ["words"]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("bin.txt", b"abc\0def", r"bin\.txt: looks binary \(NUL byte at offset 3\)"),
        ("latin.txt", "caf\xe9!".encode("latin-1"), r"latin\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', r"bad\.jsonl:2: not valid JSON"),
        ("field.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', r"field\.jsonl:2: no 'text' field \(found: body\)"),
        ("list.jsonl", b'["text"]\n', r"list\.jsonl:1: no 'text' field"),
        ("num.jsonl", b'{"text": 3}\n', r"num\.jsonl:1: field 'text' is int, not text"),
        ("data.csv", b"a,b\n", r"data\.csv: unsupported file type '\.csv'; use \.txt, \.jsonl, \.parquet"),
        ("fake.parquet", b"not parquet", r"fake\.parquet: not a readable parquet file"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_user_corpus([str(tmp_path / name)])


def test_missing_paths_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: no such file or folder"):
        read_user_corpus([str(tmp_path / "nope.txt")])
    with pytest.raises(DataError, match="the folder holds no .txt/.jsonl/.parquet files"):
        read_user_corpus([str(tmp_path)])


def test_parquet_without_the_text_column(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["a"]}), f)
    with pytest.raises(DataError, match=r"no 'text' column \(found: content\)"):
        read_user_corpus([str(f)])
    pq.write_table(pa.table({"text": [1]}), f)
    with pytest.raises(DataError, match="column 'text' has type int64, not string"):
        read_user_corpus([str(f)])


def docs_named(n):
    return [Document(f"doc{i}", f"text {i}") for i in range(n)]


def test_split_is_deterministic_disjoint_and_complete():
    docs = docs_named(40)
    train, val = split_documents(docs, 0.1)
    assert len(val) == 4 and len(train) == 36
    assert {d.name for d in train} | {d.name for d in val} == {d.name for d in docs}
    assert not {d.name for d in train} & {d.name for d in val}
    assert split_documents(docs, 0.1) == (train, val)
    # Membership depends on the names only, not on the input order.
    shuffled = random.Random(1).sample(docs, len(docs))
    assert {d.name for d in split_documents(shuffled, 0.1)[1]} == {d.name for d in val}
    # A larger fraction holds out a superset (the same hash order, cut later).
    assert {d.name for d in val} < {d.name for d in split_documents(docs, 0.3)[1]}


def test_split_is_the_same_wherever_the_folder_lives(tmp_path):
    for where in ("here", "elsewhere/deeper"):
        write_corpus(tmp_path / where / "texts", n_docs=20)
    splits = [split_documents(read_user_corpus(str(tmp_path / w / "texts")), 0.2) for w in ("here", "elsewhere/deeper")]
    assert splits[0] == splits[1] and len(splits[0][1]) == 4
    assert splits[0][1][0].name.startswith("texts/doc")


def test_split_keeps_at_least_one_document_each_side():
    for n in (2, 3):
        for fraction in (0.01, 0.99):
            train, val = split_documents(docs_named(n), fraction)
            assert len(train) >= 1 and len(val) >= 1 and len(train) + len(val) == n


def test_single_document_is_split_by_position():
    text = "".join(f"line {i}\n" for i in range(100))
    (train,), (val,) = split_documents([Document("only", text)], 0.25)
    assert train.text + val.text == text
    assert len(val.text) == round(len(text) * 0.25)
    cut = len(train.text)
    assert (train.name, val.name) == (f"only[:{cut}]", f"only[{cut}:]")
    with pytest.raises(DataError, match="need more text"):
        split_documents([Document("tiny", "x")], 0.1)


def test_split_rejects_bad_input():
    with pytest.raises(DataError, match="no documents"):
        split_documents([], 0.1)
    with pytest.raises(DataError, match=r"val_fraction must be in \(0, 1\)"):
        split_documents(docs_named(3), 1.0)


@pytest.mark.slow
def test_default_corpus(monkeypatch):
    """Shakespeare's 42 works and the Bible's 66 books, fetched once, then read from the cache alone."""
    docs = default_corpus(progress=False)
    names = [d.name for d in docs]
    assert len(docs) == 108 and len(set(names)) == 108
    assert sum(n.startswith("shakespeare/") for n in names) == 42
    assert sum(n.startswith("kjv/") for n in names) == 66
    text = {d.name: d.text for d in docs}
    assert "To be, or not to be" in text["shakespeare/hamlet"]
    assert text["kjv/genesis"].startswith(
        "The First Book of Moses, called Genesis\n\nIn the beginning God created the heaven"
    )
    assert text["kjv/revelation"].endswith("The grace of our Lord Jesus Christ be with you all. Amen.\n")
    assert not any(re.search(r"\d+:\d+", t) for n, t in text.items() if n.startswith("kjv/"))  # no verse refs

    def no_pip(*args, **kwargs):
        raise AssertionError("the cached corpus must not be downloaded again")

    monkeypatch.setattr(cache.subprocess, "run", no_pip)
    assert default_corpus(progress=False) == docs
