"""The hardware probe, and precision and compile resolved from it (`steadylm.train.execution`)."""

import json

import pytest
import torch

from helpers import tiny_config, write_corpus
from steadylm import hardware
from steadylm.errors import SteadyLMError
from steadylm.hardware import Hardware
from steadylm.train import execution
from steadylm.train.execution import resolve_compile, resolve_precision
from steadylm.train.trainer import Trainer


def _hw(native: bool, device: str = "cpu", fp32: float = 60.0) -> Hardware:
    bf16 = 2 * fp32 if native else fp32 / 40
    return Hardware(device, "Test CPU", ("avx2",), True, None, fp32, bf16, native)


@pytest.fixture
def cfg(tmp_path):
    return tiny_config(tmp_path, **{"train.precision": "auto", "train.compile": "auto"})


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(execution, "_warned", set())


def test_auto_is_bf16_where_native_and_fp32_where_emulated(cfg):
    assert resolve_precision(cfg, _hw(native=True)) == "bf16"
    assert resolve_precision(cfg, _hw(native=False)) == "fp32"
    assert resolve_precision(cfg, _hw(native=True, device="cuda:0")) == "bf16"


def test_auto_keeps_the_precision_a_resumed_run_started_with(cfg):
    assert resolve_precision(cfg, _hw(native=True), resumed={"precision": "fp32"}) == "fp32"
    assert resolve_precision(cfg, _hw(native=False), resumed={"precision": "fp32"}) == "fp32"
    assert resolve_precision(cfg, _hw(native=True), resumed={}) == "bf16"  # nothing recorded


def test_auto_compile_keeps_the_choice_a_resumed_run_started_with(cfg):
    long = 6e12  # FLOPs per token: any run is long enough to compile
    assert resolve_compile(cfg, _hw(native=True), "bf16", long)[0]
    assert resolve_compile(cfg, _hw(native=True), "bf16", long, resumed={"compile": False}) == (
        False, "auto: kept from the run's start (off)")
    assert resolve_compile(cfg, _hw(native=True), "bf16", 1.0, resumed={"compile": True})[0]
    # A run from before "auto" recorded nothing: it ran eager, and stays eager.
    assert not resolve_compile(cfg, _hw(native=True), "bf16", long, resumed={})[0]


def test_explicit_bf16_on_emulating_hardware_warns_once_with_the_slowdown(cfg, capsys):
    cfg.train.precision = "bf16"
    assert resolve_precision(cfg, _hw(native=False)) == "bf16"
    assert resolve_precision(cfg, _hw(native=False)) == "bf16"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "emulated" in err and "40x slower than fp32" in err
    assert resolve_precision(cfg, _hw(native=True)) == "bf16"
    assert capsys.readouterr().err == ""  # native: nothing to say


def test_strict_makes_emulated_bf16_an_error(cfg):
    cfg.train.precision, cfg.train.precision_strict = "bf16", True
    with pytest.raises(SteadyLMError, match="emulated .* 40x slower than fp32; use train.precision='fp32'"):
        resolve_precision(cfg, _hw(native=False))


def test_fp16_needs_cuda(cfg):
    cfg.train.precision = "fp16"
    with pytest.raises(SteadyLMError, match="'fp16' needs CUDA"):
        resolve_precision(cfg, _hw(native=True))


def test_compile_auto_is_off_for_short_runs_and_on_for_long_ones(cfg, monkeypatch):
    monkeypatch.setattr(execution, "_have_cxx", lambda: True)
    flops = 6 * 1e6  # a 1M-parameter model
    on, reason = resolve_compile(cfg, _hw(native=True), "bf16", flops)
    assert not on and reason.startswith("auto: estimated eager run") and "< 10 x 60 s" in reason
    # bf16 at 120 GFLOP/s: 128 tokens a step (batch 8 x block 16) x 6e6 FLOPs / (120 GFLOP/s
    # x 0.5) is 12.8 ms, 19 s in all.
    cfg.train.max_steps = 1500
    assert not resolve_compile(cfg, _hw(native=True), "bf16", flops)[0]
    # 2048 tokens a step: 0.2 s a step, 307 s in all; at 3000 steps 614 s, past 10 x 60 s.
    cfg.model.block_size, cfg.train.batch_size, cfg.train.micro_batch_size = 256, 8, 8
    assert not resolve_compile(cfg, _hw(native=True), "bf16", flops)[0]
    cfg.train.max_steps = 3000
    on, reason = resolve_compile(cfg, _hw(native=True), "bf16", flops)
    assert on and ">= 10 x 60 s" in reason
    # Two ranks split the batch: each rank's run is half as long.
    assert not resolve_compile(cfg, _hw(native=True), "bf16", flops, world_size=2)[0]
    # On CUDA the same rule, in fp32 too.
    assert resolve_compile(cfg, _hw(native=True, device="cuda:0"), "fp32", 2 * flops)[0]


def test_compile_auto_stays_eager_for_fp32_on_cpu(cfg, monkeypatch):
    monkeypatch.setattr(execution, "_have_cxx", lambda: True)
    cfg.train.max_steps = 10**9
    on, reason = resolve_compile(cfg, _hw(native=False), "fp32", 6e9)
    assert not on and reason.startswith("auto: off for fp32 on CPU")


def test_compile_true_and_false_are_kept_and_auto_needs_a_compiler(cfg, monkeypatch):
    cfg.train.compile = True
    assert resolve_compile(cfg, _hw(native=False), "fp32", 1.0) == (True, "train.compile=true")
    cfg.train.compile = False
    assert resolve_compile(cfg, _hw(native=False), "fp32", 1.0) == (False, "train.compile=false")
    cfg.train.compile, cfg.train.max_steps = "auto", 10**9
    monkeypatch.setattr(execution, "_have_cxx", lambda: False)
    assert resolve_compile(cfg, _hw(native=True), "bf16", 1e9) == (
        False, "auto: no C++ compiler for torch.compile on CPU")


@pytest.mark.parametrize("flags, bf16_gflops, native", [
    ("fpu avx2 fma avx512f avx512_bf16", 120.0, True),   # the instructions, and torch uses them
    ("fpu avx2 fma", 120.0, False),                       # fast timing alone is not enough with flags
    ("fpu avx2 fma avx512f avx512_bf16", 1.0, False),    # flags, but this build emulates
    (None, 120.0, True),                                  # no flag list: the timing decides
    (None, 1.0, False),
])
def test_probe_reads_flags_and_timing(monkeypatch, flags, bf16_gflops, native):
    lines = ["processor\t: 0\n", "model name\t: Fake CPU 9000\n"]
    if flags is not None:
        lines.append(f"flags\t\t: {flags}\n")
    monkeypatch.setattr(hardware, "_cpuinfo_lines", lambda: lines)
    speed = {torch.float32: 100.0, torch.bfloat16: bf16_gflops}
    monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype, device: speed[dtype])
    hardware._probe.cache_clear()
    try:
        hw = hardware.probe(torch.device("cpu"))
    finally:
        hardware._probe.cache_clear()
    assert hw.name == "Fake CPU 9000" and hw.native_bf16 is native and hw.flags_known is (flags is not None)
    if flags:
        assert "avx2" in hw.flags and ("avx512_bf16" in hw.flags) == ("avx512_bf16" in flags)
    assert ("bf16 native" in hw.summary()) is native


def test_probe_on_this_machine_is_fast_cached_and_recorded(tmp_path):
    hw = hardware.probe(torch.device("cpu"))
    assert hw.fp32_gflops > 0 and hw.bf16_gflops > 0 and hardware.probe(torch.device("cpu")) is hw
    assert json.loads(json.dumps(hw.as_dict()))["name"] == hw.name


def test_a_resumed_auto_run_keeps_its_recorded_precision(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    cfg = tiny_config(corpus, **{"train.precision": "auto", "train.compile": "auto"})
    run = tmp_path / "run"
    trainer = Trainer(cfg, run, progress=False, stop_at=4)
    trainer.fit()
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["precision"] == trainer.precision and prov["hardware"]["name"] == trainer.hardware.name
    assert prov["compile"] is False and prov["compile_reason"].startswith("auto: ")
    assert f"precision {trainer.precision}" in capsys.readouterr().err  # the start-up line
    # As if the run had started on a host that chose the other precision.
    other = "bf16" if trainer.precision == "fp32" else "fp32"
    (run / "provenance.json").write_text(json.dumps({**prov, "precision": other}))
    again = tiny_config(corpus, **{"train.precision": "auto", "train.compile": "auto"})
    resumed = Trainer(again, run, resume=True, progress=False)
    assert resumed.precision == other
    assert resumed.compile is False and resumed.compile_reason == "auto: kept from the run's start (off)"


def test_strict_bf16_on_emulating_hardware_exits_2_before_writing_the_run(tmp_path, capsys, monkeypatch):
    from helpers import tiny_overrides
    from steadylm.cli import main
    from steadylm.train import trainer

    monkeypatch.setattr(trainer, "probe", lambda device: _hw(native=False))
    corpus = write_corpus(tmp_path / "corpus")
    over = tiny_overrides(corpus, **{"train.precision": "bf16", "train.precision_strict": True})
    out = tmp_path / "run"
    code = main(["train", *[x for o in over for x in ("--set", o)], "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "bf16 matmuls are emulated on this CPU (Test CPU" in err and "40x slower" in err
    assert not out.exists()


def test_the_probe_leaves_the_global_random_stream_alone():
    """The probe runs once per process, wherever a job first asks: drawing its operands from the
    global generator would shift every seeded run after it (a resumed fine-tune diverged)."""
    from steadylm.hardware import matmul_gflops

    state = torch.get_rng_state()
    assert matmul_gflops(torch.float32, torch.device("cpu"), n=32) > 0
    assert torch.equal(torch.get_rng_state(), state)
