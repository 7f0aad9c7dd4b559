"""Malformed input exits 2 with one line on stderr: no traceback, no half-written run."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import tiny_overrides, write_corpus
from steadylm.cli import main
from steadylm.config import Config

_KEYS = {s: list(v) for s, v in Config().to_dict().items()}
_POSITIVE_INT = ["model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "train.max_steps",
                 "train.batch_size", "train.micro_batch_size", "train.log_every"]
_identifier = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)

bad_override = st.one_of(
    # unknown key in a real section
    st.builds(lambda s, k: f"{s}.{k}x=1", st.sampled_from(sorted(_KEYS)), _identifier),
    # unknown section
    st.builds(lambda s: f"{s}zz.n_layer=1", _identifier),
    # wrong type: a string for an int key
    st.builds(lambda k, v: f'{k}="{v}"', st.sampled_from(_POSITIVE_INT), _identifier),
    # out of range
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_POSITIVE_INT), st.integers(-10**9, 0)),
    # invalid choice
    st.builds(lambda k, v: f'{k}="{v}"', st.sampled_from(["model.attention", "model.norm_layout", "model.embed_norm",
                                                          "train.precision", "train.parallel"]), _identifier),
    # heads that do not divide the width
    st.builds(lambda h: f"model.n_head={h}", st.sampled_from([3, 5, 7, 9, 11])),
    # not section.key=value at all
    _identifier,
)


def _assert_one_line_exit_2(code, err):
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("steadylm"), err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(item=bad_override)
def test_any_bad_override_exits_2_with_one_line(tmp_path, capsys, item):
    out = tmp_path / "run"
    code = main(["train", "--config", "tiny-cpu", "--set", item, "--out", str(out), "--no-progress"])
    _assert_one_line_exit_2(code, capsys.readouterr().err)
    assert not out.exists()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path / "cache"))


def _train(tmp_path, data_path, *extra):
    over = tiny_overrides(tmp_path, **{"data.path": str(data_path)})
    return main(["train", *[x for o in over for x in ("--set", o)], *extra,
                 "--out", str(tmp_path / "run"), "--no-progress"])


def _bad_data(kind, d):
    """Write one kind of bad input under d; returns (path to pass as data.path, name the error must give)."""
    files = {
        "empty-file": ("blank.txt", b""),
        "binary": ("bin.txt", b"text\x00\x01\x02binary"),
        "non-utf8": ("latin.txt", "caf\xe9 au lait".encode("latin-1")),
        "bad-jsonl": ("bad.jsonl", b'{"text": "ok"}\nnot json\n'),
        "unsupported": ("data.csv", b"a,b\n"),
    }
    if kind == "missing":
        return d / "missing.txt", "missing.txt"
    if kind == "empty-folder":
        (d / "empty").mkdir()
        return d / "empty", "empty"
    name, content = files[kind]
    (d / name).write_bytes(content)
    return d / name, name


@pytest.mark.parametrize("kind", ["missing", "empty-folder", "empty-file", "binary", "non-utf8", "bad-jsonl",
                                  "unsupported"])
def test_bad_data_exits_2_and_names_the_file(tmp_path, capsys, cache, kind):
    path, needle = _bad_data(kind, tmp_path)
    code = _train(tmp_path, path)
    err = capsys.readouterr().err
    _assert_one_line_exit_2(code, err)
    assert needle in err
    assert not (tmp_path / "run").exists()


def test_resume_guards(tmp_path, capsys, cache):
    corpus = write_corpus(tmp_path / "corpus", n_docs=6, words_per_doc=60)
    assert _train(tmp_path, corpus) == 0
    capsys.readouterr()
    status_before = (tmp_path / "run" / "status.json").read_text()
    # an output folder that holds a run, without --resume
    _assert_one_line_exit_2(_train(tmp_path, corpus), capsys.readouterr().err)
    # an incompatible config on --resume
    _assert_one_line_exit_2(_train(tmp_path, corpus, "--set", "model.n_layer=3", "--resume"),
                            err := capsys.readouterr().err)
    assert "model.n_layer differs" in err
    # the data changed under the run: a different BPE is trained, which no longer matches the checkpoint
    # (every document changes: which one is held out depends on its path, so one alone may be validation)
    write_corpus(corpus, n_docs=6, words_per_doc=60, seed=1)
    _assert_one_line_exit_2(_train(tmp_path, corpus, "--resume"), err := capsys.readouterr().err)
    assert "tokenizer does not match" in err
    assert (tmp_path / "run" / "status.json").read_text() == status_before  # the finished run is untouched
    # an output folder holding something else
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    over = tiny_overrides(corpus)
    code = main(["train", *[x for o in over for x in ("--set", o)], "--out", str(other), "--no-progress"])
    _assert_one_line_exit_2(code, err := capsys.readouterr().err)
    assert "other files" in err and json.dumps(sorted(p.name for p in other.iterdir())) == '["notes.txt"]'
