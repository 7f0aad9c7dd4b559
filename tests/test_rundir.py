"""The run folder module and the layering rule: model/, data/ and monitor/ import no higher layer."""

import ast
import json
from pathlib import Path

import pytest

import steadylm
from steadylm import rundir
from steadylm.errors import CheckpointError
from steadylm.fsutil import sha256_file

SRC = Path(steadylm.__file__).parent
# Lower layers and the packages they must not import (directly or lazily inside a function).
FORBIDDEN = {
    "model": ("steadylm.train", "steadylm.experiments", "steadylm.analysis"),
    "data": ("steadylm.train", "steadylm.experiments", "steadylm.analysis"),
    "monitor": ("steadylm.train", "steadylm.experiments", "steadylm.analysis"),
}
# Commands that only need a device or a run folder, not the training machinery.
NO_TRAIN = ("cli/sample.py", "cli/analyze.py", "cli/tev.py", "cli/export_hf.py")
# Helpers every layer may use: they import no steadylm module but these.
FOUNDATION = {"rundir.py", "device.py", "fsutil.py", "errors.py"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _violations(files, forbidden) -> list[str]:
    return [f"{f.relative_to(SRC)} imports {name}" for f in files for name in _imports(f)
            if name.startswith(forbidden)]


def test_lower_layers_import_no_higher_layer():
    bad = []
    for package, forbidden in FORBIDDEN.items():
        bad += _violations(sorted((SRC / package).rglob("*.py")), forbidden)
    bad += _violations([SRC / f for f in NO_TRAIN], ("steadylm.train",))
    allowed = {"steadylm." + f.removesuffix(".py") for f in FOUNDATION}
    bad += [f"{f} imports {name}" for f in sorted(FOUNDATION) for name in _imports(SRC / f)
            if name.startswith("steadylm") and name not in allowed]
    assert not bad, "\n".join(bad)


def test_the_rule_catches_a_lazy_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def load():\n    from steadylm.train.checkpoint import save_checkpoint\n")
    assert _imports(f) == ["steadylm.train.checkpoint"]


def test_no_function_in_src_reaches_60_lines():
    """Long functions hide state and mix concerns (docs/architecture.md): split them."""
    long = []
    for f in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= 60:
                    long.append(f"{f.relative_to(SRC)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)


def _fake_checkpoint(run: Path, step: int) -> Path:
    ckpt = run / rundir.CHECKPOINTS / rundir.step_dir_name(step)
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"w" * step)
    manifest = {"schema_version": rundir.SCHEMA_VERSION, "step": step, "world_size": 1,
                "files": {"model.safetensors": sha256_file(ckpt / "model.safetensors")}}
    (ckpt / rundir.MANIFEST).write_text(json.dumps(manifest))
    return ckpt


def test_latest_and_verified_checkpoints_skip_corrupt_ones(tmp_path, capsys):
    run = tmp_path / "run"
    for step in (2, 4, 10):
        _fake_checkpoint(run, step)
    (run / rundir.CHECKPOINTS / ".tmp_step_000012").mkdir()  # a crash mid-write
    assert [p.name for p in rundir.list_checkpoints(run)] == ["step_000010", "step_000004", "step_000002"]
    (run / rundir.CHECKPOINTS / "step_000010" / "model.safetensors").write_bytes(b"torn")
    assert rundir.latest_checkpoint(run).name == "step_000004"
    assert "skipping corrupt checkpoint" in capsys.readouterr().err
    assert [p.name for p in rundir.verified_checkpoints(run, quiet=True)] == ["step_000002", "step_000004"]
    assert rundir.resolve_checkpoint(run).name == "step_000004"
    ckpt = run / rundir.CHECKPOINTS / "step_000002"
    assert rundir.resolve_checkpoint(ckpt) == ckpt  # a checkpoint folder is itself
    assert rundir.read_manifest(ckpt)["step"] == 2


def test_a_run_without_a_verified_checkpoint_is_a_one_line_error(tmp_path):
    run = tmp_path / "run"
    ckpt = _fake_checkpoint(run, 3)
    (ckpt / rundir.MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=r"no checkpoint with a verified manifest .*\(found: step_000003\)"):
        rundir.resolve_checkpoint(run)


def test_status_is_replaced_atomically_and_metrics_skip_a_torn_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert rundir.read_status(run) == {}
    rundir.write_status(run, "running", step=0)
    rundir.write_status(run, "finished", step=8, checkpoint=None)
    assert rundir.read_status(run) == {"status": "finished", "step": 8, "checkpoint": None}
    assert sorted(p.name for p in run.iterdir()) == [rundir.STATUS]  # no temporary file left
    (run / rundir.METRICS).write_text('{"step": 0, "loss": 1.5}\n{"step": 1, "lo')
    assert rundir.read_metrics(run) == [{"step": 0, "loss": 1.5}]
    assert rundir.read_metrics(run / rundir.METRICS) == rundir.read_metrics(run)
    assert not rundir.is_run(run)
