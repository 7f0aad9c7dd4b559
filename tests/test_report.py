"""`steadylm report`: rendered from a real tiny sweep plus hand-made runs with known final
losses, a loss blow-up that TEV saw coming, a divergence and a collapsed run; its table numbers
recomputed here from the runs' metrics.jsonl. The statistics themselves are checked on
hand-made cases in test_report_stats.py."""

import json
import math
import re
import statistics

import numpy as np
import pytest

from helpers import tiny_overrides, write_corpus
from steadylm.cli import main
from steadylm.config import load_config
from steadylm.experiments.unigram import COLLAPSE_MARGIN, reference

SPIKE, N_STEPS, TEV_LEAD = 150, 200, 10
GAIN = -0.2  # the hand-made mlra runs' final validation loss minus the baseline's, per seed
NOISE = (0.0, 0.01, -0.01)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, corpus):
    """A real 2-variant x 2-seed sweep of the tests' tiny model, with every monitor logging."""
    root = tmp_path_factory.mktemp("report")
    extra = {"train.max_steps": 12, "monitor.gradvar_every": 2, "monitor.act_every": 4}
    fixed = "\n".join(f'"{k}" = {v}' for k, v in (o.split("=", 1) for o in tiny_overrides(corpus, **extra)))
    spec = root / "spec.toml"
    spec.write_text(f'[sweep]\nbase = "tiny-cpu"\nseeds = [1, 2]\n[sweep.set]\n{fixed}\n'
                    '[sweep.variants.base]\n[sweep.variants.mlra]\n"model.attention" = "mlra"\n')
    assert main(["sweep", str(spec), "--out", str(root / "sweep"), "--no-progress"]) == 0
    return root / "sweep"


def _write_run(folder, corpus, lr, seed, final_val, mlra=False, spike=False, diverge_at=None, gradvar=True,
               extra=(), speed=1000.0):
    """A hand-made run on the test corpus whose validation loss ends at `final_val`: smooth TEV
    that steps up TEV_LEAD steps before a loss blow-up (whose gradient norm jumps only at the
    blow-up), or values turning "nan" where it diverges."""
    folder.mkdir(parents=True)
    over = tiny_overrides(corpus, **{"model.n_layer": 3, "train.lr": lr, "train.min_lr": lr / 10, "train.seed": seed})
    cfg = load_config(None, over + (["model.attention=mlra"] if mlra else []) + list(extra))
    (folder / "config.toml").write_text(cfg.to_toml())
    rng = np.random.default_rng(seed)
    lines = []
    for step in range(N_STEPS):
        loss = 6.0 - 3.5 * step / N_STEPS + 0.01 * rng.standard_normal()
        tev = 0.02 + 1e-5 * step + 1e-7 * rng.standard_normal() + (5e-5 if spike and step >= SPIKE - TEV_LEAD else 0)
        gnorm = 1.0 + 0.01 * rng.standard_normal()
        if spike and step == SPIKE:
            loss, gnorm = 9.0, 10.0
        row = {"step": step, "tokens": step * 100, "loss": loss, "lr": lr, "grad_norm": gnorm,
               "tev_mean": tev, "tev_std": tev / 10,
               "tokens_per_s": speed * (0.5 if step % 50 == 49 else 1.0)}  # evaluation windows slower
        if gradvar and step % 10 == 0:
            row["grad_var_embed"] = 1e-6 * (1 + 0.1 * rng.standard_normal())
        if (step + 1) % 50 == 0:
            row["val_loss"] = final_val + 0.5 * (N_STEPS - step - 1) / N_STEPS
            row["val_ppl"] = math.exp(row["val_loss"])
        if diverge_at is not None and step >= diverge_at:
            row = {**row, **{k: "nan" for k in ("loss", "grad_norm", "tev_mean", "tev_std")}}
            row.pop("val_loss", None), row.pop("val_ppl", None)
        lines.append(row)
        if spike and step == SPIKE:
            lines.append({"event": "spike", "step": step, "loss": loss, "grad_norm": gnorm, "action": "log"})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    status = "diverged" if diverge_at is not None else "finished"
    (folder / "status.json").write_text(json.dumps({"status": status, "step": N_STEPS}))
    return cfg


@pytest.fixture(scope="module")
def handmade(tmp_path_factory, corpus):
    """Baseline and MLRA at lr 1e-3 with known paired differences; at lr 1e-2 a baseline run
    with a blow-up, one that diverges, and an MLRA run that collapsed."""
    root = tmp_path_factory.mktemp("handmade")
    for seed, noise in zip((1, 2, 3), NOISE):
        _write_run(root / f"base-s{seed}", corpus, 1e-3, seed, 2.5 + 0.01 * seed)
        _write_run(root / f"mlra-s{seed}", corpus, 1e-3, seed, 2.5 + 0.01 * seed + GAIN + noise, mlra=True)
    _write_run(root / "spiky", corpus, 1e-2, 1, 2.4, spike=True)
    _write_run(root / "blowup", corpus, 1e-2, 2, 2.4, diverge_at=120)
    _write_run(root / "flat", corpus, 1e-2, 1, 6.0, mlra=True, gradvar=False)
    return root


def _section(md, heading):
    start = md.index(heading + "\n")
    nxt = md.find("\n## ", start + len(heading))
    return md[start:nxt if nxt > 0 else None]


def _table(text, which=0):
    """The `which`-th Markdown table in `text` as a list of {header: cell} dicts."""
    blocks = re.findall(r"((?:^\|.*\n?)+)", text, flags=re.MULTILINE)
    lines = blocks[which].strip().splitlines()
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

    def last(k):
        return [float(r[k]) for r in rows if k in r and "event" not in r][-1]

    return {k: last(k) for k in ("val_loss", "val_ppl", "tev_mean", "tev_std")}


@pytest.fixture(scope="module")
def combined(sweep, handmade, tmp_path_factory):
    """One report of the sweep and the hand-made runs, compared with the hand-made baseline."""
    out = tmp_path_factory.mktemp("combined") / "rep"
    assert main(["report", str(sweep), str(handmade), "--out", str(out), "--no-progress",
                 "--baseline", "baseline"]) == 0
    return out


def test_report_tables_match_the_runs_metrics(sweep, combined):
    out = combined
    md = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())

    # Per-depth table of the sweep: recomputed from each run's own metrics.jsonl.
    index = [json.loads(ln) for ln in (sweep / "index.jsonl").read_text().splitlines()]
    table = {row["variant"]: row for row in _table(_section(md, "## n_layer = 2"))}
    assert set(table) == {"base", "mlra"}
    ref = reference(load_config(sweep / index[0]["dir"] / "config.toml"), progress=False).nats
    n_collapsed_sweep = 0
    for variant, row in table.items():
        finals = [_finals(sweep / r["dir"]) for r in index if r["variant"] == variant]
        assert row["runs"] == "2" and row["diverged"] == "0/2" and row["spikes"] == "0"
        n_collapsed = sum(f["val_loss"] >= ref - COLLAPSE_MARGIN for f in finals)
        assert row["collapsed"] == f"{n_collapsed}/2"
        n_collapsed_sweep += n_collapsed
        for col, key in (("val loss", "val_loss"), ("val ppl", "val_ppl"), ("μ_TEV", "tev_mean"), ("σ_TEV", "tev_std")):
            values = [f[key] for f in finals]
            _close(row[col], (statistics.mean(values), statistics.stdev(values)))
            group = next(g for g in summary["groups"] if g["variant"] == variant)
            assert group["final_" + key]["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            assert group["final_" + key]["sd"] == pytest.approx(statistics.stdev(values), rel=1e-12)

    # Size: the real runs' parameter counts as their provenance.json records them (MLRA's
    # factorised projections have fewer); the hand-made runs have no provenance, only throughput.
    size = {(r["n_layer"], r["variant"]): r for r in _table(_section(md, "## Size and speed"))}
    assert {k for k in size if k[0] == "2"} == {("2", "base"), ("2", "mlra")}
    assert size[("3", "baseline")]["parameters"] == "—" and size[("3", "baseline")]["tokens/s"] != "—"
    for variant in ("base", "mlra"):
        run_dir = sweep / next(r["dir"] for r in index if r["variant"] == variant)
        prov = json.loads((run_dir / "provenance.json").read_text())
        assert size[("2", variant)]["parameters"] == f"{prov['parameters']:,}"
        assert size[("2", variant)]["embedding parameters"] == f"{prov['embedding_parameters']:,}"

    # The hand-made runs: one blow-up, one divergence (its "nan" values read as non-finite).
    deep = {(row["variant"], row["lr"]): row for row in _table(_section(md, "## n_layer = 3"))}
    assert deep[("baseline", "1e-2")]["spikes"] == "1" and deep[("baseline", "1e-2")]["diverged"] == "1/2"
    assert deep[("attention=mlra", "1e-2")]["collapsed"] == "1/1"

    # Early warning: the blow-up is a loss-defined event; TEV stepped TEV_LEAD steps before it,
    # the gradient norm only at it; the divergence is an event at its first non-finite step.
    ew = _section(md, "## Early warning")
    events = {r["run"]: r for r in _table(ew, 0)}
    assert events["spiky"]["event step"] == str(SPIKE)
    assert events["spiky"]["μ_TEV"] == f"{TEV_LEAD} ahead" and events["spiky"]["gradient norm"] == "at it"
    assert events["spiky"]["ΔTEV/Σlr"] == f"{TEV_LEAD} ahead"
    assert events["blowup"]["event step"] == "120" and events["blowup"]["peak loss"] == "inf"
    scores = {r["signal"]: r for r in _table(ew, 1)}
    assert scores["μ_TEV"]["warned"] == "1" and scores["gradient norm"]["warned"] == "0"

    # 12 steps are too few for the sweep's runs to learn more than a unigram table: all collapsed,
    # so they are left out of the correlations.
    assert n_collapsed_sweep == 4

    # TEV against gradient variance, within (depth, lr) groups: the six hand-made runs at lr 1e-3
    # form the one group with 3 or more runs that learned.
    tev = _section(md, "## TEV")
    gv = {r["signal"]: r for r in _table(tev.split("### Does TEV track")[1])}
    assert gv["μ_TEV"]["groups"] == "1" and gv["μ_TEV"]["runs"] == "6"

    # One self-contained page: every figure embedded, none linked.
    html = (out / "report.html").read_text()
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert html.count('src="data:image/png;base64,') == len(pngs) >= 4
    assert not re.search(r'src="(?!data:)', html)
    assert all(f"plots/{name}" in md for name in pngs)


def test_recipe_comparison_of_hand_made_runs(combined):
    out = combined
    md = (out / "report.md").read_text()
    cmp = _section(md, "## Recipes compared, seed by seed")
    rows = {r["lr"]: r for r in _table(cmp, 0)}
    # lr 1e-3: Δ = GAIN + noise per seed; SE = sd(NOISE) / sqrt(3) on 2 degrees of freedom.
    se = statistics.stdev(NOISE) / math.sqrt(3)
    assert float(rows["1e-3"]["Δ"]) == pytest.approx(GAIN, abs=5e-5)
    assert float(rows["1e-3"]["SE"]) == pytest.approx(se, abs=5e-5)
    lo, hi = map(float, rows["1e-3"]["95% CI"].strip("[]").split(","))
    assert (lo, hi) == pytest.approx((GAIN - 4.302653 * se, GAIN + 4.302653 * se), abs=1e-4)
    # lr 1e-2: the MLRA run collapsed (and a baseline seed diverged): shown, not compared.
    assert rows["1e-2"]["Δ"] == "not compared: collapsed"
    assert "**1 cell compared**" in cmp
    best = {r["variant"]: r for r in _table(cmp.split("### Each recipe at its own best learning rate")[1])}
    assert best["attention=mlra"]["best lr"] == "1e-3"
    summary = json.loads((out / "summary.json").read_text())
    flat = next(r for r in summary["runs"] if r["name"] == "flat")
    assert flat["collapsed"] is True and flat["unigram_nats"] < 6.0 - COLLAPSE_MARGIN


def test_size_and_speed_with_the_loss_against_embedding_parameters(corpus, tmp_path):
    """Three recipes with known sizes, speeds and losses: the table reads provenance.json and the
    median throughput, and the Pareto front keeps a smaller, better recipe and drops a larger,
    worse one."""
    recipes = {  # name: (extra config, embedding parameters, total, tokens/s, final val loss)
        "dense": ((), 1000, 5000, 1000.0, 2.5),
        "small": (("model.qk_norm=true",), 100, 4100, 800.0, 2.7),
        "worse": (("train.z_loss=0.001",), 500, 4500, 900.0, 2.8),
    }
    for name, (extra, emb, total, speed, val) in recipes.items():
        for seed in (1, 2):
            run = tmp_path / "runs" / f"{name}-s{seed}"
            _write_run(run, corpus, 1e-3, seed, val + 0.01 * seed, extra=extra, speed=speed * seed)
            (run / "provenance.json").write_text(json.dumps({"parameters": total, "embedding_parameters": emb}))
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--no-progress"]) == 0
    section = _section((out / "report.md").read_text(), "## Size and speed")
    rows = {r["variant"].split(",")[0]: r for r in _table(section)}
    assert rows["baseline"]["parameters"] == "5,000" and rows["baseline"]["embedding parameters"] == "1,000"
    assert rows["qk_norm=True"]["embedding × smaller"] == "10×"
    assert rows["z_loss=0.001"]["embedding × smaller"] == "2×"
    # each run's median window (the evaluation windows at half speed are the outliers), mean over seeds
    assert rows["qk_norm=True"]["tokens/s"] == f"1200 ± {statistics.stdev([800.0, 1600.0]):.0f}"
    assert rows["qk_norm=True"]["speed vs baseline"] == "0.800"
    assert "n_layer 3, lr 1e-3: qk_norm=True → baseline." in section
    assert (out / "plots" / "loss-vs-embedding-parameters.png").is_file()
    fronts = json.loads((out / "summary.json").read_text())["size"]["fronts"]
    assert fronts == [{"depth": 3, "lr": 1e-3, "variants": ["qk_norm=True", "baseline"]}]


def test_report_says_in_words_what_it_cannot_compute(sweep, handmade, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["report", str(handmade / "flat"), "--out", str(out), "--no-progress"]) == 0
    md = (out / "report.md").read_text()
    assert "single learning rate" in md
    assert "Not logged by these runs, so not judged: μ_TEV, frequent third" in md
    assert "Not computed: no run that learned logged the embedding's gradient variance" in md
    assert "Not logged here, so their panels are empty: gradient variance" in md
    assert "nothing to compare" in md and "No run had an instability event" in md
    assert "Collapsed: `flat`." in md

    # A report folder is replaced whole; any other folder is left alone.
    assert main(["report", str(handmade / "spiky"), "--out", str(out), "--no-progress"]) == 0
    assert "spiky" in (out / "report.md").read_text() and "Collapsed: `flat`" not in (out / "report.md").read_text()
    assert main(["report", str(sweep), "--out", str(tmp_path), "--no-progress"]) == 2
    assert "already holds other files" in capsys.readouterr().err
    assert main(["report", str(sweep), "--out", str(tmp_path / "c"), "--baseline", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--baseline: no variant 'nope'" in err and "base, mlra" in err
    assert not (tmp_path / "c").exists()
    assert main(["report", str(sweep), "--out", str(tmp_path / "d"), "--rise", "0"]) == 2
    assert "--rise: must be > 0" in capsys.readouterr().err


def test_preface_is_placed_under_the_title_in_both_renderings(handmade, tmp_path, capsys):
    preface = tmp_path / "reading.md"
    preface.write_text("## Reading\n\nMLRA lowers **TEV** at\nevery depth.\n\n- first `claim`\n  continued\n- second\n")
    out = tmp_path / "rep"
    assert main(["report", str(handmade / "flat"), "--out", str(out), "--preface", str(preface), "--no-progress"]) == 0
    md = (out / "report.md").read_text()
    assert md.index("## Reading") < md.index("## n_layer")
    assert "MLRA lowers **TEV** at every depth.\n\n- first `claim` continued\n- second\n" in md
    html = (out / "report.html").read_text()
    assert "<h2>Reading</h2>" in html and "<li>first <code>claim</code> continued</li>" in html
    assert main(["report", str(handmade / "flat"), "--out", str(tmp_path / "x"),
                 "--preface", str(tmp_path / "none.md")]) == 2
    assert "--preface: cannot read" in capsys.readouterr().err
