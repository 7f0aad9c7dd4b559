"""`steadylm embed` runs under `steadylm sweep` (job = "embed"), and the embed table script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from steadylm.cli import main
from steadylm.embed.config import load_embed_config
from steadylm.errors import SteadyLMError
from steadylm.experiments.spec import parse_spec
from steadylm.experiments.sweep import Sweep, read_index
from test_embed import _top_words, fake_benchmarks, topic_text  # noqa: F401  (fixture)

TABLE_SCRIPT = Path(__file__).parent.parent / "experiments" / "embed_table.py"


def _spec(tmp_path, body: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(body)
    return path


def test_sweep_runs_two_tiny_embed_runs(tmp_path, fake_benchmarks):  # noqa: F811
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(topic_text(1500), encoding="utf-8")
    fake_benchmarks(_top_words(corpus, 60))
    spec = _spec(
        tmp_path,
        f"""
[sweep]
job = "embed"
seeds = [0, 1]
[sweep.set]
"embed.method" = "sgns"
"embed.corpus" = [{json.dumps(str(corpus))}]
"embed.vocab" = 60
"embed.dim" = 6
"embed.epochs" = 1
""",
    )
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    index = read_index(out)
    assert [(r["name"], r["status"], r["seed"]) for r in index] == [
        ("s0", "finished", 0),
        ("s1", "finished", 1),
    ]
    runs = [json.loads((out / r["dir"] / "embed.json").read_text()) for r in index]
    assert [r["seed"] for r in runs] == [0, 1] and all(r["method"] == "sgns" for r in runs)
    assert runs[0]["objective"] != runs[1]["objective"]  # the seed reached gensim
    assert all(r["vocab"] == 60 and r["dim"] == 6 and r["iterations"] == 1 for r in runs)

    # Re-running keeps the finished runs (nothing is trained again).
    before = (out / index[0]["dir"] / "embed.json").stat().st_mtime_ns
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    assert (out / index[0]["dir"] / "embed.json").stat().st_mtime_ns == before

    # The command a sweep gives each run in a subprocess (--jobs > 1) is a valid `steadylm embed`.
    sweep = Sweep(parse_spec(spec), tmp_path / "again")
    args = sweep.train_args(sweep.entries[1])
    assert args[0] == "embed" and "--resume" not in args
    assert main(args) == 0
    again = json.loads((sweep.entries[1].run_dir / "embed.json").read_text())
    assert again["objective"] == runs[1]["objective"]

    # The summary script reads the sweep and writes one row per (corpus, d, method), seeds pooled.
    table = tmp_path / "table.md"
    subprocess.run([sys.executable, str(TABLE_SCRIPT), str(out), "--out", str(table)], check=True)
    text = table.read_text()
    assert "| 6 | sgns epochs=1 vocab=60 | 2 |" in text  # two seeds pooled, options shown
    mean = (runs[0]["objective"] + runs[1]["objective"]) / 2
    assert f"{mean:.4e}" in text and " ± " in text


def test_embed_spec_errors_name_the_key(tmp_path):
    with pytest.raises(SteadyLMError, match="embed.methd: unknown key; keys of \\[embed\\]"):
        parse_spec(
            _spec(tmp_path, '[sweep]\njob = "embed"\n[sweep.grid]\n"embed.methd" = ["sgns"]\n')
        )
    with pytest.raises(SteadyLMError, match="run method_glove: --method 'glove': choose one of"):
        parse_spec(
            _spec(
                tmp_path,
                '[sweep]\njob = "embed"\n[sweep.grid]\n"embed.method" = ["sgns", "glove"]\n',
            )
        ).resolve()
    with pytest.raises(SteadyLMError, match="embed.seed is set in both"):
        parse_spec(
            _spec(tmp_path, '[sweep]\njob = "embed"\nseeds = [0]\n[sweep.set]\n"embed.seed" = 1\n')
        )


def test_embed_config_file_and_overrides(tmp_path):
    path = tmp_path / "embed.toml"
    path.write_text('[embed]\nmethod = "svd_sppmi"\ndim = 50\ncorpus = "wide"\n')
    cfg = load_embed_config(path, ["embed.dim=20", "embed.dim=30"])
    assert (cfg.method, cfg.dim, cfg.corpus) == ("svd_sppmi", 30, "wide")
    with pytest.raises(SteadyLMError, match=r"unknown section \[train\]"):
        load_embed_config(None, ["train.lr=1"])
    with pytest.raises(SteadyLMError, match="embed.dim: expected int"):
        load_embed_config(None, ['embed.dim="big"'])
