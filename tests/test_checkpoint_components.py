"""Checkpoint components: the save/load loop, and checkpoints written before it still resume exactly."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from steadylm.config import load_config
from steadylm.errors import CheckpointError
from steadylm.rundir import read_manifest
from steadylm.train.checkpoint import Component, load_checkpoint, save_checkpoint
from steadylm.train.trainer import Trainer

DATA = Path(__file__).parent / "data"


class Box:
    """The smallest stateful object: what a new job's piece of state looks like to the loop."""

    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def _components(head, scaler, extra=None):
    out = [
        Component("head", "head.safetensors", _Tensors(head), "safetensors"),
        Component("scaler", "train_state/scaler.pt", scaler, "torch"),
        Component("rng", "train_state/rng_rank{rank}.pt", Box(7), "per_rank"),
    ]
    return out + ([extra] if extra else [])


class _Tensors:
    def __init__(self, module):
        self.module = module

    def state_dict(self):
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, sd):
        self.module.load_state_dict(sd)


def test_components_round_trip_and_optional_ones_may_be_missing(tmp_path):
    head, scaler = torch.nn.Linear(4, 2), torch.amp.GradScaler("cpu", init_scale=64.0)
    scaler.scale(head(torch.ones(1, 4)).sum())  # the scaler's state exists once it has scaled
    ckpt = save_checkpoint(tmp_path / "run", 5, _components(head, scaler), {"config.toml": "[model]\n"})
    assert read_manifest(ckpt)["step"] == 5
    assert set(read_manifest(ckpt)["files"]) == {
        "head.safetensors", "train_state/scaler.pt", "train_state/rng_rank0.pt", "config.toml"}

    head2, scaler2 = torch.nn.Linear(4, 2), torch.amp.GradScaler("cpu", init_scale=1.0)
    adapter = Box("fresh")  # added after the checkpoint was written (a LoRA adapter, say)
    optional = Component("adapter", "adapter.pt", adapter, "torch", required=False)
    restored = load_checkpoint(ckpt, _components(head2, scaler2, optional))
    assert restored == {"head", "scaler", "rng"} and adapter.value == "fresh"
    assert torch.equal(head2.weight, head.weight) and scaler2.get_scale() == 64.0

    required = Component("adapter", "adapter.pt", Box(0), "torch")
    with pytest.raises(CheckpointError, match="adapter.pt is missing"):
        load_checkpoint(ckpt, [required])


def test_per_rank_state_is_restored_only_by_the_same_world_size(tmp_path):
    from steadylm.train.distributed import DistContext

    rng = Box(3)
    ckpt = save_checkpoint(tmp_path / "run", 1, [Component("rng", "r{rank}.pt", rng, "per_rank")], {})
    other_world = DistContext(rank=0, world_size=2)  # reading only: no collective is involved
    fresh = Box(None)
    assert load_checkpoint(ckpt, [Component("rng", "r{rank}.pt", fresh, "per_rank")], other_world) == set()
    assert fresh.value is None


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="format 'yaml'"):
        Component("x", "x.yaml", Box(1), "yaml")


def test_a_checkpoint_written_by_the_previous_code_resumes_exactly(tmp_path, monkeypatch):
    """tests/data/v1_run was written by the trainer before checkpoints became components: a run
    of 6 steps (dropout on) stopped after its checkpoint at step 3. Resuming it here must end on
    the weights the uninterrupted run of that code ended on (v1_final_step6.safetensors).

    Bit for bit on the kind of CPU that wrote them (AVX2); another CPU's kernels round
    differently (an AVX-512 EPYC ends up to 3e-7 away). Hence an absolute tolerance of 1e-5,
    far below what a state restored wrongly would cost: steps 3 to 6 move every tensor by more
    than 4e-3 somewhere, so lost optimizer moments, RNG state or data position would show.

    BPE training is not reproducible across processes, so the run's prepared dataset (generated
    text, tokenized) is committed beside it (v1_dataset) and stands in for data preparation.
    Both runs used one thread: float sums are split differently across more threads."""
    from steadylm.data.prepare import load_prepared
    from steadylm.train import trainer as trainer_module

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _resume_v1_run(tmp_path, monkeypatch, trainer_module, load_prepared)
    finally:
        torch.set_num_threads(threads)


def _resume_v1_run(tmp_path, monkeypatch, trainer_module, load_prepared):
    dataset = shutil.copytree(DATA / "v1_dataset", tmp_path / "dataset")
    monkeypatch.setattr(trainer_module, "prepare", lambda data_cfg, progress: load_prepared(dataset))
    run = shutil.copytree(DATA / "v1_run", tmp_path / "run")
    cfg = load_config(run / "config.toml", [])
    result = Trainer(cfg, run, resume=True, progress=False).fit()
    assert (result.status, result.step) == ("finished", 6)
    final = load_file(str(run / "checkpoints" / "step_000006" / "model.safetensors"))
    expected = load_file(str(DATA / "v1_final_step6.safetensors"))
    assert final.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(final[k], expected[k], rtol=0, atol=1e-5, msg=k)
    # The new checkpoint has the old one's layout, file for file.
    old_files = set(read_manifest(run / "checkpoints" / "step_000003")["files"])
    assert set(read_manifest(run / "checkpoints" / "step_000006")["files"]) == old_files
