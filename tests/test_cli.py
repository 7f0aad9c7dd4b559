"""The CLI end to end on a tiny run: --help everywhere, prepare, sample, export-hf."""

import pytest

from helpers import tiny_overrides, write_corpus
from steadylm.cli import COMMANDS, main


def test_every_subcommand_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name.replace("_", "-"), "--help"])
        assert e.value.code == 0
        assert "usage: steadylm" in capsys.readouterr().out


def test_prepare_train_sample_export(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path / "corpus", n_docs=6, words_per_doc=60)
    sets = [x for o in tiny_overrides(corpus) for x in ("--set", o)]
    assert main(["prepare", *sets, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer  bpe:300 (300 tokens)" in out and "train" in out
    assert main(["train", *sets, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "status      finished at step 8" in capsys.readouterr().out
    assert main(["sample", str(tmp_path / "run"), "--prompt", "the model", "--tokens", "12", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the model") and len(first) > len("the model")
    assert main(["sample", str(tmp_path / "run"), "--prompt", "the model", "--tokens", "12", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first  # seeded
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nothing")]) == 2
