"""The report's statistics on hand-made cases whose answers are known: Student's t against
SciPy, Holm on known p-values, a paired interval computed by hand, a within-group permutation
that finds nothing where only the learning rate differs, an Adam-like walk at the drift end,
a loss-defined event that a lagging signal does not "predict", and the collapsed-run rule."""

import math

import numpy as np
import pytest
from scipy import stats as sp

from helpers import tiny_config, write_corpus
from steadylm.data.prepare import prepare
from steadylm.experiments import analysis
from steadylm.experiments.runs import Run, recipes
from steadylm.experiments.stats import (
    Estimate,
    detectable,
    grouped_spearman,
    holm,
    pooled_estimates,
    rankdata,
    spearman,
    t_quantile,
    t_sf2,
)
from steadylm.experiments.tevstats import adam_references, crossing_step, signal
from steadylm.experiments.unigram import (
    COLLAPSE_MARGIN,
    Reference,
    collapsed,
    reference,
    unigram_cross_entropy,
)
from steadylm.experiments.warning import Outcome, early_warning, loss_events


def test_student_t_matches_scipy():
    for df in (1, 2, 3, 7, 30):
        for t in (0.05, 1.0, 2.2, 9.0):
            assert t_sf2(t, df) == pytest.approx(2 * sp.t.sf(t, df), rel=1e-9, abs=1e-14)
        assert t_quantile(0.975, df) == pytest.approx(sp.t.ppf(0.975, df), rel=1e-9)


def test_holm_on_known_pvalues():
    # Sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4·0.005, 3·0.01, 2·0.03, max(1·0.04, 0.06).
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1, and monotone
    assert holm([]) == []


def test_paired_interval_on_a_known_case():
    # One cell, differences 1, 2, 3: mean 2, sd 1, SE 1/sqrt(3), t(0.975, 2) = 4.302653.
    e = pooled_estimates({"a": [1.0, 2.0, 3.0]})["a"]
    assert (e.mean, e.n, e.df) == (2.0, 3, 2)
    assert e.se == pytest.approx(1 / math.sqrt(3))
    assert (e.lo, e.hi) == pytest.approx(
        (2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), rel=1e-6
    )
    assert e.p == pytest.approx(sp.ttest_1samp([1, 2, 3], 0).pvalue, rel=1e-9)
    # Pooled with a second cell (5, 7, 9): s² = (2 + 8) / 4 = 2.5 on 4 degrees of freedom.
    both = pooled_estimates({"a": [1.0, 2.0, 3.0], "b": [5.0, 7.0, 9.0]}, {"a": 0, "b": 0})
    assert both["a"].df == both["b"].df == 4
    assert both["a"].se == pytest.approx(math.sqrt(2.5 / 3))
    assert both["b"].hi - both["b"].mean == pytest.approx(sp.t.ppf(0.975, 4) * math.sqrt(2.5 / 3))
    # Smallest detectable effect at 80% power, two-sided 5%: (t_0.975 + t_0.8) on df 4, times SE.
    want = (sp.t.ppf(0.975, 4) + sp.t.ppf(0.8, 4)) * math.sqrt(2.5 / 3)
    assert detectable(both["a"]) == pytest.approx(want, rel=1e-8)
    # One seed: a mean but no interval.
    one = pooled_estimates({"a": [0.3]})["a"]
    assert one.mean == 0.3 and one.se is None and one.lo is None and not one.excludes_zero
    assert detectable(one) is None


def test_spearman_matches_hand_computed_values():
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert rankdata([5, 6, 7, 8, 7]).tolist() == [1, 2, 3.5, 5, 3.5]
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, float("nan"), 4, 5], [2, 1, 0, 4, 3]) == spearman(
        [1, 2, 4, 5], [2, 1, 4, 3]
    )
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    # Pooled within groups: the size-weighted mean of the groups' rhos.
    c = grouped_spearman(
        [1, 2, 3, 4, 1, 2, 3], [10, 30, 20, 40, 3, 2, 1], ["a"] * 4 + ["b"] * 3, permutations=0
    )
    assert c.rho == pytest.approx((4 * 0.8 + 3 * -1.0) / 7) and c.groups == 2 and c.n == 7


def test_within_group_permutation_finds_no_effect_where_only_the_learning_rate_differs():
    """TEV and the loss both rise with the learning rate, and are unrelated inside each rate:
    across runs the correlation is strong and 'significant'; inside groups it is neither."""
    rng = np.random.default_rng(3)
    lrs = np.repeat([1e-3, 1e-2, 1e-1, 1.0], 10)
    tev = np.log10(lrs) + 0.1 * rng.standard_normal(40)
    loss = 0.5 * np.log10(lrs) + 0.1 * rng.standard_normal(40)
    across = grouped_spearman(tev, loss, None, permutations=2000)
    within = grouped_spearman(tev, loss, lrs.tolist(), permutations=2000)
    assert across.rho > 0.8 and across.p == across.floor
    assert abs(within.rho) < 0.25 and within.p > 0.1 and within.groups == 4
    # A real within-group relation is found.
    loss_linked = 0.5 * np.log10(lrs) + (tev - np.log10(lrs)) + 0.02 * rng.standard_normal(40)
    found = grouped_spearman(tev, loss_linked, lrs.tolist(), permutations=2000)
    assert found.rho > 0.9 and found.p < 0.001


def _walk_run(drift: bool, steps: int = 200, lr: float = 1e-3, rows: int = 300, d: int = 32) -> Run:
    """An embedding whose every entry moves by exactly lr per step (Adam's unit step), either
    with a fixed random sign per entry (drift) or a fresh random sign every step (noise)."""
    rng = np.random.default_rng(0)
    emb = 0.02 * rng.standard_normal((rows, d))
    sign = rng.choice([-1.0, 1.0], size=emb.shape)
    out = []
    for step in range(steps):
        emb = emb + lr * (sign if drift else rng.choice([-1.0, 1.0], size=emb.shape))
        tev = emb.std(axis=1)  # TEV_i: population std of row i over the hidden dimension
        out.append(
            {
                "step": step,
                "lr": lr,
                "loss": 5.0,
                "tev_mean": float(tev.mean()),
                "tev_std": float(tev.std()),
            }
        )
    return Run("walk", None, "v", 2, lr, 1, "finished", rows=out)


def test_an_adam_like_walk_lands_at_the_drift_end_and_a_random_one_at_the_noise_end():
    drift = adam_references(_walk_run(drift=True))
    assert drift["position"][-1] == pytest.approx(1.0, abs=0.05)
    assert drift["delta_tev2"][-1] / drift["drift"][-1] == pytest.approx(1.0, rel=0.15)
    noise = adam_references(_walk_run(drift=False))
    assert noise["position"][-1] == pytest.approx(0.0, abs=0.1)
    # The drift walk moves every entry by lr per step with a fixed sign, so each row's std grows
    # and μ_TEV's growth per unit of Σlr is positive; it starts after the first update.
    steps, per_lr = signal(_walk_run(drift=True), "tev_per_lr")
    assert steps[0] == 1 and len(steps) == 199 and np.isfinite(per_lr).all() and (per_lr > 0).all()


def test_loss_events_are_rises_above_the_running_minimum_or_non_finite_steps():
    loss = np.array([5, 4, 3, 3.5, 4.0, 4.2, 3.1, np.nan, 3.0, 2.9])
    assert loss_events(np.arange(10), loss) == [4, 7]
    assert loss_events(np.arange(10), loss, rise=2.0) == [7]


def _event_run(signal_jump: int, event: int = 200, n: int = 300) -> Run:
    rng = np.random.default_rng(1)
    rows = []
    for s in range(n):
        loss = 4.0 - s / n + 0.02 * rng.standard_normal() + (2.5 if event <= s < event + 5 else 0.0)
        tev = 0.02 + 1e-5 * s + 1e-7 * rng.standard_normal() + (1e-4 if s >= signal_jump else 0.0)
        rows.append(
            {
                "step": s,
                "lr": 1e-3,
                "loss": loss,
                "tev_mean": tev,
                "tev_std": tev / 10,
                "grad_norm": 1 + 0.01 * rng.standard_normal(),
            }
        )
    return Run(f"jump{signal_jump}", None, "v", 2, 1e-3, 1, "finished", rows=rows)


def test_a_lagging_signal_does_not_predict_a_loss_defined_event():
    lagging = early_warning([_event_run(signal_jump=205)], window=30, k=4.0, horizon=30, draws=200)
    (event,) = lagging["events"]
    assert event.step == 200 and event.peak > 5.0
    assert event.leads["tev_mean"].outcome is Outcome.MISSED
    assert lagging["scores"]["tev_mean"].warned == 0
    leading = early_warning([_event_run(signal_jump=190)], window=30, k=4.0, horizon=30, draws=200)
    lead = leading["events"][0].leads["tev_mean"]
    assert lead.outcome is Outcome.WARNED and lead.steps == 10
    score = leading["scores"]["tev_mean"]
    # One alarm among ~270 judged steps lands in a 30-step horizon by luck about 11% of the time.
    assert score.alarms == 1 and 0.05 < score.chance_mean < 0.2 and score.p < 0.25
    # An event in the first W steps has no judged step before it.
    early = early_warning(
        [_event_run(signal_jump=10, event=20)], window=30, k=4.0, horizon=30, draws=50
    )
    assert early["events"][0].leads["tev_mean"].outcome is Outcome.UNSCORABLE


def test_collapsed_rule_and_unigram_reference(tmp_path):
    ref = Reference(5.0)
    assert collapsed(5.0 - COLLAPSE_MARGIN - 0.01, ref) is False
    assert collapsed(5.0 - COLLAPSE_MARGIN + 0.01, ref) is True
    assert (
        collapsed(6.5, ref) is True
        and collapsed(math.inf, ref) is True
        and collapsed(math.nan, ref) is True
    )
    assert collapsed(None, ref) is None and collapsed(4.0, Reference(None, error="x")) is None
    # Add-one-smoothed training frequencies: train 0,0,0,1 over a vocabulary of 3 gives
    # p = (4, 2, 1) / 7, so targets 0 and 2 score (ln 7/4 + ln 7) / 2.
    want = (math.log(7 / 4) + math.log(7)) / 2
    assert unigram_cross_entropy(np.array([0, 0, 0, 1]), np.array([0, 2]), 3) == pytest.approx(want)
    # The reference scores the same validation targets as the trainer's evaluation (windows
    # i·T .. i·T + T, so targets val[1 : n·T + 1]) against the training split's frequencies.
    cfg = tiny_config(write_corpus(tmp_path / "corpus"))
    r = reference(cfg, progress=False)
    data = prepare(cfg.data, progress=False)
    T = cfg.model.block_size
    n = min((len(data.val) - 1) // T, cfg.train.eval_batches * cfg.train.micro_batch_size)
    assert r.tokens == n * T
    counts = np.bincount(data.train, minlength=data.tokenizer.vocab_size)
    p = (counts + 1) / (counts.sum() + data.tokenizer.vocab_size)
    assert r.nats == pytest.approx(-np.log(p[np.asarray(data.val[1 : n * T + 1])]).mean())


def _summary(variant, depth, lr, seed, loss, collapsed=False, diverged=False):
    return {
        "variant": variant,
        "depth": depth,
        "lr": lr,
        "seed": seed,
        "final_loss": loss,
        "steps": 10,
        "collapsed": collapsed,
        "diverged": diverged,
    }


def test_recipe_comparison_pairs_seeds_pools_per_lr_and_keeps_collapsed_cells_out():
    s = []
    for seed, noise in zip((1, 2, 3), (0.0, 0.01, -0.01)):
        for depth, gain in ((4, -0.10), (16, -0.30)):
            s.append(_summary("base", depth, 1e-3, seed, 5.0 + 0.1 * seed))
            s.append(_summary("mlra", depth, 1e-3, seed, 5.0 + 0.1 * seed + gain + noise))
        s.append(_summary("base", 4, 1.0, seed, 6.0))
        s.append(_summary("mlra", 4, 1.0, seed, 6.6, collapsed=seed == 2))
    cmp = analysis.compare_recipes(s, "base")
    rows = {(r.key.depth, r.key.lr): r for r in cmp["rows"]}
    assert rows[(4, 1e-3)].estimate.mean == pytest.approx(-0.10)
    assert rows[(16, 1e-3)].estimate.mean == pytest.approx(-0.30)
    assert (
        rows[(4, 1.0)].excluded is analysis.Exclusion.COLLAPSED and rows[(4, 1.0)].estimate is None
    )
    assert cmp["family"] == 2 and cmp["pooled_df"] == {1e-3: 4}
    # Differences -0.1 + (0, .01, -.01): variance 1e-4 per cell, pooled the same.
    assert rows[(4, 1e-3)].estimate.se == pytest.approx(math.sqrt(1e-4 / 3))
    ps = [rows[(4, 1e-3)].estimate.p, rows[(16, 1e-3)].estimate.p]
    assert [rows[(4, 1e-3)].holm_p, rows[(16, 1e-3)].holm_p] == pytest.approx(holm(ps))
    (inter,) = analysis.depth_interaction(cmp)
    assert (inter["deep"], inter["shallow"]) == (16, 4)
    assert inter["estimate"].mean == pytest.approx(-0.20)
    assert inter["estimate"].se == pytest.approx(math.sqrt(2 * 1e-4 / 3))
    best = {(b["variant"], b["depth"]): b for b in analysis.best_lr_comparison(s, cmp)}
    assert best[("mlra", 4)]["lr"] == 1e-3
    assert best[("mlra", 4)]["estimate"] == rows[(4, 1e-3)].estimate


def test_the_means_beside_a_difference_are_over_the_seeds_both_sides_ran():
    # The baseline has three seeds, the variant (still running) two: the shown means must differ
    # by exactly the paired Δ, not mix seed 3 into one side only.
    s = [_summary("base", 4, 1e-3, seed, loss) for seed, loss in ((1, 5.2), (2, 5.0), (3, 5.6))]
    s += [_summary("mlra", 4, 1e-3, 1, 5.1), _summary("mlra", 4, 1e-3, 2, 4.9)]
    (row,) = analysis.compare_recipes(s, "base")["rows"]
    assert row.estimate.mean == pytest.approx(-0.1)
    assert (row.variant_mean, row.baseline_mean) == pytest.approx((5.0, 5.1))


def test_best_learning_rates_that_differ_use_each_rates_pooled_seed_variance():
    # base is best at 1e-3 (seed values 5.0, 5.2), mlra at 1e-2 (4.8, 4.9; at 1e-3: 5.4, 5.4).
    s = [
        _summary("base", 4, 1e-3, 1, 5.0), _summary("base", 4, 1e-3, 2, 5.2),
        _summary("base", 4, 1e-2, 1, 6.0), _summary("base", 4, 1e-2, 2, 6.0),
        _summary("mlra", 4, 1e-3, 1, 5.4), _summary("mlra", 4, 1e-3, 2, 5.4),
        _summary("mlra", 4, 1e-2, 1, 4.8), _summary("mlra", 4, 1e-2, 2, 4.9),
    ]  # fmt: skip
    var = analysis.seed_variance(s)
    # lr 1e-3: cells (5.0, 5.2) and (5.4, 5.4) give (0.02 + 0) / 2; lr 1e-2: (0 + 0.005) / 2.
    assert var[1e-3] == pytest.approx((0.01, 2)) and var[1e-2] == pytest.approx((0.0025, 2))
    cmp = analysis.compare_recipes(s, "base")
    (row,) = [b for b in analysis.best_lr_comparison(s, cmp) if b["variant"] == "mlra"]
    assert (row["lr"], row["baseline_lr"]) == (1e-2, 1e-3)
    e = row["estimate"]
    a, b = 0.0025 / 2, 0.01 / 2
    assert e.mean == pytest.approx(-0.25) and e.se == pytest.approx(math.sqrt(a + b))
    assert e.df == int((a + b) ** 2 / (a**2 / 2 + b**2 / 2))


def test_trajectory_and_matched_loss_helpers():
    def e(mean, lo, hi):
        return Estimate(mean, 2, 0.01, 4, lo, hi, 0.01)

    assert (
        analysis.classify([(100, e(-0.1, -0.2, -0.05)), (200, e(-0.01, -0.05, 0.03))])
        is analysis.Trajectory.CATCH_UP
    )
    assert (
        analysis.classify([(100, e(0.0, -0.1, 0.1)), (200, e(-0.1, -0.2, -0.05))])
        is analysis.Trajectory.LASTING_GAIN
    )
    assert analysis.classify([(200, e(0.1, 0.05, 0.2))]) is analysis.Trajectory.WORSE
    assert crossing_step(np.array([0, 100, 200]), np.array([6.0, 5.0, 4.0]), 4.5) == pytest.approx(
        150.0
    )
    assert crossing_step(np.array([0, 100]), np.array([6.0, 5.0]), 4.0) is None


def test_variants_that_differ_only_in_learning_rate_are_one_recipe():
    """A spec may give each learning rate its own variant (lr and min_lr set together); the
    comparison pairs by recipe, so both rates are compared with the baseline."""
    runs, summaries = [], []
    for arm, attention in (("pre_ln", "mha"), ("mlra", "mlra")):
        for tag, lr in (("opt", 1e-3), ("stress", 3e-3)):
            for seed in (1, 2):
                config = {
                    "model": {"n_layer": 6, "attention": attention},
                    "train": {"lr": lr, "min_lr": lr / 10, "seed": seed, "log_every": 10},
                }
                run = Run(
                    f"{arm}-{tag}-s{seed}",
                    None,
                    f"{arm}-{tag}",
                    6,
                    lr,
                    seed,
                    "finished",
                    config=config,
                )
                runs.append(run)
    # a sweep's pending run has no config yet: it takes its variant's recipe, so that the
    # baseline, looked up by variant, still names the recipe of the runs that have data
    runs.append(Run("pre_ln-opt-s3", None, "pre_ln-opt", 6, 1e-3, 3, "pending"))
    runs.append(Run("other-s1", None, "other", 6, 1e-3, 1, "pending"))
    names = recipes(runs)
    assert (
        names["mlra-stress-s2"] == "mlra-opt / mlra-stress"
        and names["pre_ln-opt-s1"] == "pre_ln-opt / pre_ln-stress"
        and names["pre_ln-opt-s3"] == "pre_ln-opt / pre_ln-stress"
        and names["other-s1"] == "other"
    )
    runs = runs[:-2]
    for r in runs:
        loss = (
            5.0
            + r.seed * 0.1
            - (0.2 if r.variant.startswith("mlra") else 0.0)
            + (0.01 if r.seed == 2 else 0)
        )
        summaries.append(
            {**_summary(r.variant, r.depth, r.lr, r.seed, loss), "recipe": names[r.name]}
        )
    cmp = analysis.compare_recipes(summaries, names["pre_ln-opt-s1"])
    assert sorted(r.key.lr for r in cmp["rows"]) == [1e-3, 3e-3] and cmp["family"] == 2
    assert all(r.estimate.mean == pytest.approx(-0.2) for r in cmp["rows"])
