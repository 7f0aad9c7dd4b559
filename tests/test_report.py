"""`steadylm report`: rendered from a real tiny sweep plus hand-made runs with a spike and a
divergence; its table numbers recomputed here from the runs' metrics.jsonl; the statistics
checked against hand-computed cases."""

import json
import math
import re
import statistics

import numpy as np
import pytest

from helpers import tiny_overrides, write_corpus
from steadylm.cli import main
from steadylm.config import load_config
from steadylm.experiments.analysis import early_warning, rankdata, spearman, spearman_pvalue
from steadylm.experiments.runs import Run

SPIKE, N_STEPS, TEV_LEAD = 150, 200, 10


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real 2-variant x 2-seed sweep of the tests' tiny model, with every monitor logging."""
    root = tmp_path_factory.mktemp("report")
    corpus = write_corpus(root / "corpus")
    extra = {"train.max_steps": 12, "monitor.gradvar_every": 2, "monitor.act_every": 4}
    fixed = "\n".join(f'"{k}" = {v}' for k, v in (o.split("=", 1) for o in tiny_overrides(corpus, **extra)))
    spec = root / "spec.toml"
    spec.write_text(f'[sweep]\nbase = "tiny-cpu"\nseeds = [1, 2]\n[sweep.set]\n{fixed}\n'
                    '[sweep.variants.base]\n[sweep.variants.mlra]\n"model.attention" = "mlra"\n')
    assert main(["sweep", str(spec), "--out", str(root / "sweep"), "--no-progress"]) == 0
    return root / "sweep"


def _write_run(folder, lr, seed, spike=False, diverge_at=None):
    """A hand-made run: smooth TEV that steps up TEV_LEAD steps before a loss spike (whose
    gradient norm jumps only at the spike), or values turning "nan" where it diverges."""
    folder.mkdir(parents=True)
    cfg = load_config(None, ["model.n_layer=3", f"train.lr={lr}", f"train.min_lr={lr / 10}", f"train.seed={seed}"])
    (folder / "config.toml").write_text(cfg.to_toml())
    rng = np.random.default_rng(seed)
    lines = []
    for step in range(N_STEPS):
        loss = 6.0 - 2.0 * step / N_STEPS + 0.01 * rng.standard_normal()
        tev = 0.02 + 1e-5 * step + 1e-7 * rng.standard_normal() + (5e-5 if spike and step >= SPIKE - TEV_LEAD else 0)
        gnorm = 1.0 + 0.01 * rng.standard_normal()
        if spike and step == SPIKE:
            loss, gnorm = 9.0, 10.0
        row = {"step": step, "tokens": step * 100, "loss": loss, "lr": lr, "grad_norm": gnorm,
               "tev_mean": tev, "tev_std": tev / 10, "tokens_per_s": 1000.0}
        if (step + 1) % 50 == 0:
            row["val_loss"] = loss + 0.1
            row["val_ppl"] = math.exp(loss + 0.1)
        if diverge_at is not None and step >= diverge_at:
            row = {**row, **{k: "nan" for k in ("loss", "grad_norm", "tev_mean", "tev_std")}}
            row.pop("val_loss", None), row.pop("val_ppl", None)
        lines.append(row)
        if spike and step == SPIKE:
            lines.append({"event": "spike", "step": step, "loss": loss, "grad_norm": gnorm, "action": "log"})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    status = "diverged" if diverge_at is not None else "finished"
    (folder / "status.json").write_text(json.dumps({"status": status, "step": N_STEPS}))


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    root = tmp_path_factory.mktemp("handmade")
    _write_run(root / "spiky", lr=1e-3, seed=1, spike=True)
    _write_run(root / "blowup", lr=1e-2, seed=1, diverge_at=120)
    return root


def _section(md, heading):
    start = md.index(heading + "\n")
    nxt = md.find("\n## ", start + len(heading))
    return md[start:nxt if nxt > 0 else None]


def _table(text):
    """The first Markdown table in `text` as a list of {header: cell} dicts."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _close(cell, expected):
    """`cell` ("m ± s" as printed) equals `expected` (mean, sd) up to its printed digits."""
    parts = [p.strip() for p in cell.split("±")]
    assert len(parts) == len(expected), cell
    for text, want in zip(parts, expected):
        digits = len(text.split(".")[1]) if "." in text and "e" not in text else 0
        tol = 0.5 * 10.0**-digits if digits else abs(want) * 5e-4
        assert abs(float(text) - want) <= tol * 1.0001, (cell, expected)


def _finals(run_dir):
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = lambda k: [float(r[k]) for r in rows if k in r and "event" not in r][-1]  # noqa: E731
    return {k: last(k) for k in ("val_loss", "val_ppl", "tev_mean", "tev_std")}


def test_report_tables_match_the_runs_metrics(sweep, handmade, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(sweep), str(handmade), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())

    # Per-depth table of the sweep: recomputed from each run's own metrics.jsonl.
    index = [json.loads(ln) for ln in (sweep / "index.jsonl").read_text().splitlines()]
    table = {row["variant"]: row for row in _table(_section(md, "## n_layer = 2"))}
    assert set(table) == {"base", "mlra"}
    for variant, row in table.items():
        finals = [_finals(sweep / r["dir"]) for r in index if r["variant"] == variant]
        assert row["runs"] == "2" and row["diverged"] == "0/2" and row["spikes"] == "0"
        for col, key in (("val loss", "val_loss"), ("val ppl", "val_ppl"), ("μ_TEV", "tev_mean"), ("σ_TEV", "tev_std")):
            values = [f[key] for f in finals]
            _close(row[col], (statistics.mean(values), statistics.stdev(values)))
            group = next(g for g in summary["groups"] if g["variant"] == variant)
            assert group["final_" + key]["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            assert group["final_" + key]["sd"] == pytest.approx(statistics.stdev(values), rel=1e-12)

    # The hand-made runs: one spike, one divergence (its "nan" values read as non-finite).
    deep = {row["lr"]: row for row in _table(_section(md, "## n_layer = 3"))}
    assert deep["1e-3"]["spikes"] == "1" and deep["1e-3"]["diverged"] == "0/1"
    assert deep["1e-2"]["diverged"] == "1/1"
    lr_rows = _table(_section(md, "## Learning-rate sensitivity").split("### n_layer = 3")[1])
    assert lr_rows[0]["lr 1e-2"] == "diverged (1/1)" and lr_rows[0]["best lr"] == "1e-3"

    # Early warning: TEV stepped TEV_LEAD steps before the spike, the gradient norm only at it.
    ew = _table(_section(md, "## Early warning"))
    spike = next(r for r in ew if r["run"] == "spiky")
    assert spike["spike step"] == str(SPIKE)
    assert spike["μ_TEV lead"] == str(TEV_LEAD) and spike["gradient norm lead"] == "0"

    # TEV against gradient variance: the sweep logged it every 2 steps.
    tev = _section(md, "## TEV and gradient variance")
    assert "Not computed" not in tev and "ρ(μ_TEV, g)" in tev
    assert summary["tev_gradvar"]["available"] and summary["tev_gradvar"]["runs"] == 4

    # One self-contained page: every figure embedded, none linked.
    html = (out / "report.html").read_text()
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert html.count('src="data:image/png;base64,') == len(pngs) >= 4
    assert not re.search(r'src="(?!data:)', html)
    assert all(f"plots/{name}" in md for name in pngs)


def test_report_says_in_words_what_it_cannot_compute(sweep, handmade, tmp_path, capsys):
    no_spikes = tmp_path / "a"
    assert main(["report", str(sweep), "--out", str(no_spikes)]) == 0
    md = (no_spikes / "report.md").read_text()
    assert "No run had a spike event" in md
    assert "single learning rate" in md

    no_gradvar = tmp_path / "b"
    assert main(["report", str(handmade / "spiky"), "--out", str(no_gradvar)]) == 0
    md = (no_gradvar / "report.md").read_text()
    assert "Not computed: no run logged the embedding's gradient variance" in md
    assert "Not logged here, so their panels are empty: gradient variance" in md

    # A report folder is replaced whole; any other folder is left alone.
    assert main(["report", str(sweep), "--out", str(no_gradvar)]) == 0
    assert "n_layer = 2" in (no_gradvar / "report.md").read_text()
    assert main(["report", str(sweep), "--out", str(tmp_path)]) == 2
    assert "already holds other files" in capsys.readouterr().err


def test_preface_is_placed_under_the_title_in_both_renderings(sweep, tmp_path, capsys):
    preface = tmp_path / "reading.md"
    preface.write_text("## Reading\n\nMLRA lowers **TEV** at\nevery depth.\n\n- first `claim`\n  continued\n- second\n")
    out = tmp_path / "rep"
    assert main(["report", str(sweep), "--out", str(out), "--preface", str(preface)]) == 0
    md = (out / "report.md").read_text()
    assert md.index("## Reading") < md.index("## n_layer")
    assert "MLRA lowers **TEV** at every depth.\n\n- first `claim` continued\n- second\n" in md
    html = (out / "report.html").read_text()
    assert "<h2>Reading</h2>" in html and "<li>first <code>claim</code> continued</li>" in html
    assert main(["report", str(sweep), "--out", str(tmp_path / "x"), "--preface", str(tmp_path / "none.md")]) == 2
    assert "--preface: cannot read" in capsys.readouterr().err


def test_spearman_matches_hand_computed_values():
    # No ties: d = (0, -1, 1, 0), rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    # Ties: y ranks (1, 2, 3.5, 5, 3.5); Pearson of ranks = 8 / sqrt(10 * 9.5)
    assert rankdata([5, 6, 7, 8, 7]).tolist() == [1, 2, 3.5, 5, 3.5]
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Non-finite pairs are dropped; fewer than 3 pairs or a constant side give no rho.
    assert spearman([1, 2, float("nan"), 4, 5], [2, 1, 0, 4, 3]) == spearman([1, 2, 4, 5], [2, 1, 4, 3])
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    # A perfect order of 7 happens in 2 of 5040 orderings: p ~ 4e-4, well under 0.01.
    assert spearman_pvalue(range(7), range(7)) < 0.01
    assert spearman_pvalue([1, 2, 3, 4], [10, 30, 20, 40]) > 0.2


def test_early_warning_leads_and_false_alarms():
    steps = np.arange(300)
    rng = np.random.default_rng(0)
    tev = 0.02 + 1e-5 * steps + 1e-7 * rng.standard_normal(300)
    tev[240:] += 1e-4  # a level shift 20 steps before the spike at 260
    gnorm = 1 + 0.01 * rng.standard_normal(300)
    gnorm[260] = 5.0
    rows = [{"step": int(s), "tev_mean": float(t), "tev_std": float(t) / 10, "grad_norm": float(g)}
            for s, t, g in zip(steps, tev, gnorm)]
    spikes = [{"event": "spike", "step": 260}, {"event": "spike", "step": 265}]  # one episode
    run = Run("r", None, "v", 2, 1e-3, 1, "finished", rows=rows, events=spikes)
    ew = early_warning([run], window=30, k=4.0, horizon=30)
    assert len(ew["spikes"]) == 1
    leads = ew["spikes"][0]["leads"]
    assert leads["tev_mean"] == 20 and leads["grad_norm"] == 0
    assert ew["summary"]["tev_mean"]["ahead"] == 1 and ew["summary"]["grad_norm"]["at_spike"] == 1
    assert ew["summary"]["tev_mean"]["false_alarm_rate"] < 0.02
    # A spike with no history before its horizon cannot be scored.
    early = Run("e", None, "v", 2, 1e-3, 1, "finished", rows=rows, events=[{"event": "spike", "step": 40}])
    assert early_warning([early], 30, 4.0, 30)["spikes"][0]["leads"]["tev_mean"] == "too early"
