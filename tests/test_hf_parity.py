"""Numerical parity with transformers' GPT2LMHeadModel, both directions, on tiny random configs."""

import json

import pytest
import torch
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from steadylm.config import Config, ModelConfig  # noqa: E402
from steadylm.errors import CheckpointError  # noqa: E402
from steadylm.model.gpt import GPT  # noqa: E402
from steadylm.model.hf import export_hf, load_model, to_hf_state_dict  # noqa: E402
from steadylm.train.checkpoint import model_state_for_saving  # noqa: E402

SHAPES = [
    dict(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=16),
    dict(n_layer=3, n_embd=48, n_head=3, vocab_size=211, n_positions=24),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_load_hf_folder_gives_hf_logits(tmp_path, shape):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**shape, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a transposition error shows
        for name, p in hf.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.normal_(0, 0.5)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    idx = torch.randint(0, shape["vocab_size"], (2, shape["n_positions"]))
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours(idx)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _write_checkpoint(folder, model: GPT):
    folder.mkdir(parents=True)
    save_file(model_state_for_saving(model), str(folder / "model.safetensors"))
    cfg = Config(model=model.config)
    (folder / "config.toml").write_text(cfg.to_toml())


@pytest.mark.parametrize("shape", SHAPES)
def test_export_hf_loads_with_equal_logits(tmp_path, shape):
    torch.manual_seed(1)
    cfg = ModelConfig(
        n_layer=shape["n_layer"], n_embd=shape["n_embd"], n_head=shape["n_head"],
        vocab_size=shape["vocab_size"], block_size=shape["n_positions"],
    )
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.normal_(0, 0.5)
    _write_checkpoint(tmp_path / "ckpt", model)
    out = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # re-tied
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), atol=1e-5, rtol=1e-5)
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"


def test_state_dict_names_are_hf_gpt2_names():
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=8)
    hf_names = set(GPT2LMHeadModel(cfg).state_dict())
    ours = GPT(ModelConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=50, block_size=8))
    converted = to_hf_state_dict(model_state_for_saving(ours))
    assert set(converted) == {n for n in hf_names if not n.endswith(".attn.bias")}
    for name, t in GPT2LMHeadModel(cfg).state_dict().items():
        if name in converted:
            assert converted[name].shape == t.shape, name


def test_export_refuses_non_gpt2_architecture(tmp_path):
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=50, block_size=8)
    _write_checkpoint(tmp_path / "ckpt", GPT(cfg))
    text = (tmp_path / "ckpt" / "config.toml").read_text().replace('qk_norm = false', 'qk_norm = true')
    (tmp_path / "ckpt" / "config.toml").write_text(text)
    with pytest.raises(CheckpointError, match="qk_norm"):
        export_hf(tmp_path / "ckpt", tmp_path / "hf")


def test_load_model_rejects_unknown_folder(tmp_path):
    with pytest.raises(CheckpointError, match="neither config.toml"):
        load_model(tmp_path)


@pytest.mark.parametrize("head", ["tied_dense", "separate"])
def test_export_of_a_tt_model_writes_the_dense_matrix_and_hf_logits_match(tmp_path, head):
    torch.manual_seed(2)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=97, block_size=16, embedding="tt", tt_rank=4,
                      tt_head=head)
    model = GPT(cfg).eval()
    _write_checkpoint(tmp_path / "ckpt", model)
    out = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    torch.testing.assert_close(hf.transformer.wte.weight, model.transformer.wte.full().detach())
    tied = hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    assert tied == (head == "tied_dense")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] == tied
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), atol=1e-5, rtol=1e-5)
