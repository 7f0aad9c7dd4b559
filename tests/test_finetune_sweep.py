"""Fine-tuning under `steadylm sweep` (job = "finetune") and `steadylm report`."""

import json

import pytest

from finetune_helpers import keyword_task, tiny_bert, write_jsonl
from steadylm.errors import SteadyLMError
from steadylm.experiments.report import write_report
from steadylm.experiments.spec import parse_spec
from steadylm.finetune.config import load_finetune_config
from steadylm.finetune.job import FinetuneJob


def _spec(tmp_path, body):
    path = tmp_path / "spec.toml"
    path.write_text(body)
    return path


def test_finetune_spec_expands_methods_and_seeds(tmp_path):
    spec = parse_spec(
        _spec(
            tmp_path,
            """
[sweep]
job = "finetune"
seeds = [0, 1]
[sweep.set]
"finetune.base" = "some/base"
"finetune.max_steps" = 5
[sweep.grid]
"finetune.method" = ["full", "sparsegrad"]
""",
        )
    )
    plans = spec.resolve()
    assert [p.name for p, _ in plans] == [
        "method_full-s0",
        "method_full-s1",
        "method_sparsegrad-s0",
        "method_sparsegrad-s1",
    ]
    assert (
        plans[3][1].method == "sparsegrad" and plans[3][1].seed == 1 and plans[3][1].max_steps == 5
    )
    with pytest.raises(SteadyLMError, match="unknown section 'train'"):
        parse_spec(_spec(tmp_path, '[sweep]\njob = "finetune"\n[sweep.set]\n"train.lr" = 1.0\n'))
    with pytest.raises(SteadyLMError, match="job: 'bogus' is not one of train, finetune, attack"):
        parse_spec(_spec(tmp_path, '[sweep]\njob = "bogus"\n'))
    with pytest.raises(SteadyLMError, match="finetune.method: 'prefix' is not one of"):
        parse_spec(
            _spec(
                tmp_path,
                '[sweep]\njob = "finetune"\n[sweep.grid]\n"finetune.method" = ["prefix"]\n',
            )
        ).resolve()


def test_sweep_runs_finetune_jobs(tmp_path):
    pytest.importorskip("steadylm.tasks")  # the task loaders (their own branch until merged)
    from steadylm.cli import main

    base = tiny_bert(tmp_path / "bert")
    data = write_jsonl(keyword_task(), tmp_path / "kw.jsonl")
    spec = _spec(
        tmp_path,
        f"""
[sweep]
job = "finetune"
seeds = [0]
[sweep.set]
"finetune.base" = "{base}"
"finetune.task" = "{data}"
"finetune.max_steps" = 3
[sweep.grid]
"finetune.method" = ["lora", "sparsegrad"]
""",
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--no-progress"]) == 0
    index = [
        json.loads(line) for line in (tmp_path / "sw" / "index.jsonl").read_text().splitlines()
    ]
    assert [r["status"] for r in index] == ["finished", "finished"]


def test_report_tabulates_accuracy_per_task_and_method(tmp_path):
    base = tiny_bert(tmp_path / "bert")
    task = keyword_task(n_train=48)
    for method in ("full", "sparsegrad"):
        for seed in (0, 1):
            cfg = load_finetune_config(
                None,
                [
                    f'finetune.base="{base}"',
                    f'finetune.method="{method}"',
                    f"finetune.seed={seed}",
                    "finetune.max_steps=3",
                    "finetune.sparsegrad_warmup_steps=2",
                ],
            )
            FinetuneJob(
                cfg, tmp_path / "runs" / f"{method}-s{seed}", task=task, progress=False
            ).run()
    html = write_report([tmp_path / "runs"], tmp_path / "report")
    md = (html.parent / "report.md").read_text()
    assert "| keywords | full | 2 |" in md and "| keywords | sparsegrad | 2 |" in md and " ± " in md
    summary = json.loads((html.parent / "summary.json").read_text())
    assert {(g["task"], g["method"], g["runs"]) for g in summary["groups"]} == {
        ("keywords", "full", 2),
        ("keywords", "sparsegrad", 2),
    }


def test_methods_are_compared_seed_by_seed_with_t_intervals():
    from steadylm.experiments.finetune_report import compare_methods

    acc = {("full", 0): 0.80, ("full", 1): 0.82, ("full", 2): 0.81,
           ("lora", 0): 0.70, ("lora", 1): 0.74, ("lora", 2): 0.72,
           ("sparsegrad", 0): 0.79, ("sparsegrad", 2): 0.80}  # fmt: skip
    done = [{"task": "rt", "method": m, "seed": s, "accuracy": a} for (m, s), a in acc.items()]
    done.append({"task": "other", "method": "full", "seed": 0, "accuracy": 0.5})  # nothing to pair with
    rows = {(c["task"], c["a"], c["b"]): c for c in compare_methods(done)}
    assert set(rows) == {("rt", "lora", "full"), ("rt", "sparsegrad", "full"), ("rt", "sparsegrad", "lora")}
    lora = rows[("rt", "lora", "full")]
    assert lora["diffs"] == pytest.approx([-0.10, -0.08, -0.09])
    e = lora["estimate"]  # sd 0.01, se 0.01/√3, t(0.975, 2) = 4.303
    assert (e.n, e.df) == (3, 2) and e.mean == pytest.approx(-0.09)
    assert e.hi == pytest.approx(-0.09 + 4.3027 * 0.01 / 3**0.5, abs=1e-4) and e.excludes_zero
    assert lora["detectable"] > e.hi - e.mean  # power 0.8 needs more than the half-width
    sg = rows[("rt", "sparsegrad", "full")]  # only the seeds both ran are paired
    assert sg["diffs"] == pytest.approx([-0.01, -0.01]) and sg["estimate"].n == 2
