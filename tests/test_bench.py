"""The benchmark's arithmetic (not its timings: those are measured by `steadylm bench`, never asserted)."""

import math

import pytest
import torch

from steadylm import bench
from steadylm.config import ModelConfig
from steadylm.model.gpt import GPT


def test_flops_per_token_counts_the_tied_head_once_and_no_positions():
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=100, block_size=16)
    model = GPT(cfg)
    n = sum(p.numel() for p in model.parameters()) - 16 * 32  # wte appears once in parameters()
    assert model.flops_per_token() == 6 * n + 12 * 2 * 32 * 16


def test_periodic_plan_times_each_monitor_on_its_least_shared_step():
    # Default cadences: every activations step is a stats step, every gradvar step fires all three.
    plan = bench.periodic_plan({"stats": 50, "act": 100, "gradvar": 200}, after=11)
    assert plan == [("stats", 50, []), ("act", 100, ["stats"]), ("gradvar", 200, ["stats", "act"])]
    # Co-prime cadences: each gets a step of its own.
    plan = bench.periodic_plan({"stats": 10, "act": 25, "gradvar": 100}, after=100)
    assert [(n, at % 10 == 0, at % 25 == 0, at % 100 == 0) for n, at, _ in plan] == [
        ("stats", True, False, False), ("act", False, True, False), ("gradvar", True, True, True)]
    assert plan[2][2] == ["stats", "act"] and all(at > 100 for _, at, _ in plan)
    # Equal cadences cannot be separated: the second is timed on the first's steps.
    assert bench.periodic_plan({"stats": 20, "act": 20, "gradvar": 40}, after=0)[1] == ("act", 20, ["stats"])


def test_targets_compare_in_the_right_direction():
    assert bench._met(0.7, ">=", 0.65) and not bench._met(0.6, ">=", 0.65)
    assert bench._met(0.005, "<", 0.01) and not bench._met(0.01, "<", 0.01)
    assert bench._met(1.10, "<=", 1.10)


def test_table_renders_every_target():
    m = {"step_s": 1.0, "tokens_per_s": 2048.0, "flops_per_s": 2e11, "peak_rss_mb": 1000.0, "gradvar_s": 0.05,
         "sections": {"data": 0.001, "forward": 0.6, "backward": 0.3, "optimizer": 0.05, "monitors": 0.004},
         "periodic": {"stats_extra_s": 0.01, "act_extra_s": 0.02, "gradvar_extra_s": 0.08, "amortised_s": 0.002}}
    ratios = {k: 1.0 for k in ("fp32_fraction_of_peak", "bf16_speedup_over_fp32", "monitor_share", "data_share",
                               "mlra_over_mha_step_time", "monitor_share_ab", "bf16_speedup_over_fp32_eager",
                               "mlra_over_mha_peak_rss", "monitor_share_every_step", "gradvar_over_tev",
                               "tt_tied_extra_share_of_fp32_step")}
    result = {"device": "cpu", "processor": "Some CPU", "threads": 2, "torch": "x", "peak_fp32_flops": 3e11,
              "peak_bf16_flops": 2e12,
              "training": {"fp32": m}, "tev_step_s": 0.01, "tev_exact_s": 0.1, "tokenizer_tokens_per_s": 1e6,
              "ratios": ratios, "best_bf16": "bf16",
              "tt": {"tt_shape": "(37,37,37)x(4,8,8)", "tt_rank": 16, "tt_tokens": 2048, "tt_params": 50000,
                     "tt_gather_s": 0.01, "tt_full_s": 0.02, "tt_tev_s": 0.03, "dense_lookup_s": 0.001},
              "targets": {k: {"value": 1.0, "op": op, "target": t, "met": bench._met(1.0, op, t)}
                          for k, (op, t) in bench.TARGETS.items()}}
    table = bench.format_table(result)
    assert "cpu (Some CPU), 2 threads" in table
    for name in bench.TARGETS:
        assert name in table
    assert "NOT met" in table and " met" in table
    assert "TT embedding (37,37,37)x(4,8,8) rank 16" in table and "2048 tokens" in table
    assert "gather 10.0 ms" in table


def test_flops_per_token_counts_a_tt_models_head_matmul_and_not_its_cores():
    dense = GPT(ModelConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=100, block_size=16))
    for head in ("tied_dense", "separate"):
        tt = GPT(ModelConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=100, block_size=16, embedding="tt",
                             tt_rank=4, tt_head=head))
        assert tt.flops_per_token() == dense.flops_per_token()


def test_tt_cost_measures_every_part_on_a_small_shape():
    r = bench.tt_cost(rows=1000, d=32, tokens=64, rank=4, reps=1)
    assert r["tt_shape"] == "(10,10,10)x(2,4,4)"
    assert all(r[k] > 0 for k in ("tt_gather_s", "tt_full_s", "tt_tev_s", "dense_lookup_s"))


def _result_without_bf16():
    m = {"step_s": 1.0, "tokens_per_s": 2048.0, "flops_per_s": 2e11, "peak_rss_mb": 1000.0, "gradvar_s": 0.05,
         "sections": {"data": 0.001, "forward": 0.6, "backward": 0.3, "optimizer": 0.05, "monitors": 0.004},
         "periodic": {}, "compile_s": None}
    measures = {k: bench.TrainMeasure(label=k, **m) for k in ("fp32", "fp32, monitors off", "mlra fp32")}
    out = {"peak_fp32_flops": 3e11, "peak_bf16_flops": None, "tev_step_s": 0.01,
           "tt": {"tt_gather_s": 0.01, "tt_full_s": 0.02, "tt_tev_s": 0.03, "dense_lookup_s": 0.001}}
    best, ratios = bench._ratios(out, measures)
    hw = {"device": "cpu", "name": "Some CPU", "flags": ["avx2", "fma"], "flags_known": True, "capability": None,
          "fp32_gflops": 60.0, "bf16_gflops": 1.5, "native_bf16": False}
    return {**out, "device": "cpu", "processor": "Some CPU", "hardware": hw, "threads": 1, "torch": "x",
            "training": {k: vars(v) for k, v in measures.items()}, "tev_exact_s": 0.1,
            "tokenizer_tokens_per_s": 1e6, "ratios": ratios, "best_bf16": None, "head": {"head_fp32_s": 0.45},
            "tt": {**out["tt"], "tt_shape": "(37,37,37)x(4,8,8)", "tt_rank": 16, "tt_tokens": 2048, "tt_params": 1},
            "targets": {k: {"value": ratios[k], "op": op, "target": t, "met": bench._met(ratios[k], op, t)}
                        for k, (op, t) in bench.TARGETS.items()}}, best


def test_without_native_bf16_the_bf16_figures_are_not_measured_rather_than_failed():
    r, best = _result_without_bf16()
    assert best is None and r["ratios"]["bf16_speedup_over_fp32"] is None
    assert r["targets"]["bf16_speedup_over_fp32"]["met"] is None
    table = bench.format_table(r)
    assert "bf16 emulated (bf16 rows skipped)" in table
    assert "hardware: cpu Some CPU (avx2, fma); matmul fp32 60 GFLOP/s, bf16 1.5: bf16 emulated (40x slower" in table
    assert "bf16_speedup_over_fp32" in table and "not measured" in table and "NOT met" not in table
    # The forward section's share that is the fused head's forward and backward.
    assert "fwd includes the output layer's backward" in table and "fp32 450 ms" in table


def test_compare_table_prints_both_speeds_and_the_ratio():
    r, _ = _result_without_bf16()
    row = {"steadylm_tokens_per_s": 660.0, "plain_tokens_per_s": 600.0, "ratio": 1.1, "ratio_min": 1.02,
           "ratio_max": 1.2, "cpu_ratio": 1.05, "round_ratios": [1.1], "round_cpu_ratios": [1.05]}
    table = bench.format_compare({**r, "rows": {"fp32": row}})
    assert "fp32" in table and " 660 " in table and " 600 " in table and "1.10x  (1.02-1.20)  1.05x" in table


def test_compare_rounds_take_the_median_of_each_process_ratio():
    # Round 1: plain steps 2x steadylm's; round 2: 1.2x; round 3: 1.5x (with one odd pair).
    def one(ours, plain):
        return {"times": {"steadylm": ours, "plain": plain}, "cpu": {"steadylm": ours, "plain": plain},
                "warmup_s": {"steadylm": 1.0, "plain": 1.0}}

    rounds = [one([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]), one([2.0, 2.0, 2.0], [2.4, 2.4, 2.4]),
              one([1.0, 1.0, 1.0], [1.5, 1.5, 3.0])]  # fmt: skip
    row = bench.compare_row(rounds, cpu=True)
    assert row["round_ratios"] == pytest.approx([2.0, 1.2, 1.5]) and row["ratio"] == pytest.approx(1.5)
    assert (row["ratio_min"], row["ratio_max"]) == pytest.approx((1.2, 3.0))
    assert row["cpu_ratio"] == pytest.approx(1.5) and row["steadylm_step_s"] == 1.0
    r, _ = _result_without_bf16()
    table = bench.format_compare({**r, "rows": {"fp32": row}})
    assert "fp32, each round: 2.00x (2.00x CPU), 1.20x (1.20x CPU), 1.50x (1.50x CPU)" in table
    assert bench.compare_row(rounds, cpu=False)["cpu_ratio"] is None


def test_rounds_belong_to_compare(capsys):
    from steadylm.cli import main

    assert main(["bench", "--rounds", "3"]) == 2
    assert "--rounds must be >= 1 and goes with --compare" in capsys.readouterr().err
    assert main(["bench", "--compare", "nanogpt", "--rounds", "0"]) == 2


def test_the_plain_loop_steps_from_the_uniform_loss_with_finite_losses():
    from steadylm.bench_nanogpt import plain_step

    step = plain_step({"vocab_size": 50, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16}, batch_size=4)
    losses = [float(step()) for _ in range(30)]
    # Random tokens: the model can only learn their uniform distribution, from ln 50 at init.
    assert abs(losses[0] - math.log(50)) < 0.3 and all(math.isfinite(v) for v in losses)


def test_revision_export_holds_what_the_before_after_script_imports(tmp_path, monkeypatch):
    """experiments/bench_revisions.py times old and new revisions through their own
    `bench.measure_training` and `bench.MONITORS_OFF`: this revision must still provide both."""
    import ast
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("needs the git checkout")
    monkeypatch.syspath_prepend(str(repo / "experiments"))
    import bench_revisions

    commit, src = bench_revisions.export(repo, "HEAD", tmp_path)
    assert len(commit) == 40
    tree = ast.parse((src / "steadylm" / "bench.py").read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assigned = (t for n in tree.body if isinstance(n, ast.Assign) for t in n.targets)
    names |= {t.id for t in assigned if isinstance(t, ast.Name)}
    assert {"measure_training", "MONITORS_OFF"} <= names


def test_compare_rows_add_bf16_only_where_it_is_native():
    labels = [m.label for m in bench.compare_modes(native_bf16=False, compile=True)]
    assert labels == ["fp32", "fp32 + compile"]
    labels = [m.label for m in bench.compare_modes(native_bf16=True, compile=False)]
    assert labels == ["fp32", "bf16 vs plain fp32", "bf16"]
    compiled = [m for m in bench.compare_modes(native_bf16=True, compile=True) if m.compiled]
    assert [m.label for m in compiled] == ["fp32 + compile", "bf16 vs plain fp32 + compile", "bf16 + compile"]


def test_the_plain_loop_under_bf16_autocast_computes_in_bf16_from_fp32_weights():
    from steadylm.bench_nanogpt import PlainGPT, plain_step

    shape = {"vocab_size": 50, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16}
    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(o.dtype) if isinstance(m, torch.nn.Linear) else None
    )
    try:
        step = plain_step(shape, batch_size=4, bf16=True)
        losses = [float(step()) for _ in range(30)]
    finally:
        hook.remove()
    assert set(seen) == {torch.bfloat16} and all(math.isfinite(v) for v in losses)
    assert abs(losses[0] - math.log(50)) < 0.3  # bf16 rounding, not a different model
    assert PlainGPT(**shape).lm_head.weight.dtype == torch.float32
