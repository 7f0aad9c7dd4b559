"""`steadylm tev` in-process on checkpoints built in the test: safetensors, HF folders, GGUF, ours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steadylm.cli import main
from steadylm.monitor import tev_summary


def tev(capsys, *argv) -> tuple[int, str, str]:
    code = main(["tev", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def tev_json(capsys, *argv):
    code, out, err = tev(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def numpy_mu_sigma(w: np.ndarray, rows: int | None = None) -> tuple[float, float]:
    w = w[:rows].astype(np.float64)
    t = w.std(axis=1)
    return t.mean(), t.std()


def word_tokenizer(path, tokens: list[str]) -> None:
    """A tokenizer.json whose token i is tokens[i]."""
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0])).save(str(path))


def test_safetensors_file_json_and_human_output(tmp_path, capsys):
    rng = np.random.default_rng(0)
    emb = rng.normal(0, 0.02, (50, 16)).astype(np.float32) * np.linspace(0.5, 2.0, 50, dtype=np.float32)[:, None]
    emb[7] = 0.25  # constant row: TEV 0, the least variable
    path = tmp_path / "weights.safetensors"
    save_file({"model.embed_tokens.weight": torch.from_numpy(emb), "model.norm.weight": torch.ones(16),
               "lm_head.weight": torch.zeros(50, 16)}, str(path))
    r = tev_json(capsys, path, "--top", "3")
    mu, sigma = numpy_mu_sigma(emb)
    assert r["tensor"] == "model.embed_tokens.weight" and r["dtype"] == "F32" and r["format"] == "safetensors"
    assert (r["vocab_size"], r["d_model"]) == (50, 16)
    assert r["mu_tev"] == pytest.approx(mu, rel=1e-5) and r["sigma_tev"] == pytest.approx(sigma, rel=1e-5)
    assert sum(r["histogram"]["counts"]) == 50
    assert r["top"]["least"][0] == {"id": 7, "tev": 0.0, "token": None}
    assert r["top"]["most"][0]["id"] in (47, 48, 49)

    code, out, _ = tev(capsys, path, "--top", "2")
    assert code == 0
    assert "model.embed_tokens.weight" in out and f"{mu:.6g}" in out and f"{sigma:.6g}" in out
    assert "2 most variable tokens" in out and "#" in out


def test_hf_gpt2_folder_with_padding_rows_and_tokenizer(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=48, n_positions=8, bos_token_id=0,
                                  eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # rows 40.. are padding in this checkpoint; make them stand out
        model.transformer.wte.weight[40:] *= 50
    model.save_pretrained(tmp_path / "gpt2")
    tokens = [f"tok{i}" for i in range(40)]
    tokens[5] = "hello"
    word_tokenizer(tmp_path / "gpt2" / "tokenizer.json", tokens)
    with torch.no_grad():
        model.transformer.wte.weight[5] *= 10  # the most variable real token
    model.save_pretrained(tmp_path / "gpt2")
    r = tev_json(capsys, tmp_path / "gpt2", "--top", "1")
    mu, sigma = tev_summary(model.transformer.wte.weight, 40)
    assert r["format"] == "huggingface" and r["model"] == "gpt2" and r["tensor"].endswith("wte.weight")
    assert (r["rows"], r["vocab_size"]) == (48, 40) and "padding" in r["vocab_note"]
    assert r["mu_tev"] == pytest.approx(mu.item(), rel=1e-5) and r["sigma_tev"] == pytest.approx(sigma.item(), rel=1e-5)
    assert r["top"]["most"][0]["token"] == "hello"


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_hf_bert_and_llama_folders(tmp_path, capsys, arch):
    transformers = pytest.importorskip("transformers")
    if arch == "bert":
        cfg = transformers.BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                                      vocab_size=60)
        model = transformers.BertModel(cfg)
    else:
        cfg = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                                       vocab_size=60, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path / arch)
    r = tev_json(capsys, tmp_path / arch)
    mu, sigma = tev_summary(model.get_input_embeddings().weight)
    assert r["model"] == arch and r["vocab_size"] == 60 and r["vocab_note"] == "config.vocab_size = 60"
    assert r["tensor"].endswith("word_embeddings.weight" if arch == "bert" else "embed_tokens.weight")
    assert r["mu_tev"] == pytest.approx(mu.item(), rel=1e-5) and r["sigma_tev"] == pytest.approx(sigma.item(), rel=1e-5)


def test_hf_folder_with_pytorch_model_bin(tmp_path, capsys):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 30}))
    wte = torch.randn(30, 8, dtype=torch.float16)
    torch.save({"transformer.wte.weight": wte, "transformer.wpe.weight": torch.randn(4, 8)},
               folder / "pytorch_model.bin")
    r = tev_json(capsys, folder)
    assert r["dtype"] == "torch.float16"
    assert r["mu_tev"] == pytest.approx(tev_summary(wte)[0].item(), rel=1e-5)


def write_gguf(path, weight: np.ndarray, tokens: list[str]) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_tensor("token_embd.weight", gguf.quantize(weight, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64), np.float32))
    w.add_tensor("output_norm.weight", np.ones(64, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_q8_0_embedding_within_quantisation_tolerance(tmp_path, capsys):
    rng = np.random.default_rng(1)
    weight = (rng.normal(0, 0.02, (300, 64)) * rng.uniform(0.5, 1.5, (300, 1))).astype(np.float32)
    weight[3] *= 4  # the most variable token, decoded from GGUF byte-level BPE
    tokens = ["<|endoftext|>", "a", "b", "\u0120the"] + [f"t{i}" for i in range(296)]
    path = tmp_path / "tiny.gguf"
    write_gguf(path, weight, tokens)
    r = tev_json(capsys, path, "--top", "1")
    mu, sigma = numpy_mu_sigma(weight)
    assert (r["format"], r["tensor"], r["dtype"], r["model"]) == ("gguf", "token_embd.weight", "Q8_0", "llama")
    assert (r["rows"], r["d_model"], r["vocab_size"]) == (300, 64, 300)
    # Q8_0 rounds each entry to 1/254 of its 32-block's max |x|: well under 1% on these figures.
    assert r["mu_tev"] == pytest.approx(mu, rel=2e-3)
    assert r["sigma_tev"] == pytest.approx(sigma, rel=1e-2)
    assert r["mu_tev"] != mu  # it really read the quantised tensor
    assert r["top"]["most"][0] == {"id": 3, "tev": pytest.approx(weight[3].std(), rel=2e-3), "token": " the"}


def test_steadylm_run_and_checkpoint_folders(tmp_path, capsys):
    from steadylm.config import load_config
    from steadylm.model.gpt import GPT
    from steadylm.train.checkpoint import Component, save_checkpoint
    from steadylm.train.distributed import DistContext
    from steadylm.train.state import ModelWeights

    cfg = load_config(None, ["model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.block_size=8",
                             "model.vocab_size=40"])
    model = GPT(cfg.model)
    tok = tmp_path / "tokenizer.json"
    word_tokenizer(tok, [f"w{i}" for i in range(36)])  # rows 36..39 are padding
    run = tmp_path / "run"
    figures = {}
    for step in (2, 4):
        with torch.no_grad():
            model.transformer.wte.weight.mul_(1.5)
        weights = Component("model", "model.safetensors", ModelWeights(model, DistContext(), fsdp=False), "safetensors")
        save_checkpoint(run, step, [weights], {"config.toml": cfg.to_toml(), "tokenizer.json": tok})
        figures[step] = [x.item() for x in tev_summary(model.transformer.wte.weight, 36)]
    r = tev_json(capsys, run)
    assert (r["format"], r["step"], r["tensor"]) == ("steadylm", 4, "transformer.wte.weight")
    assert r["checkpoint"].endswith("step_000004") and (r["rows"], r["vocab_size"]) == (40, 36)
    assert [r["mu_tev"], r["sigma_tev"]] == pytest.approx(figures[4], rel=1e-6)
    r2 = tev_json(capsys, run / "checkpoints" / "step_000002")
    assert r2["step"] == 2 and [r2["mu_tev"], r2["sigma_tev"]] == pytest.approx(figures[2], rel=1e-6)

    both = tev_json(capsys, run / "checkpoints" / "step_000002", run)
    assert [x["step"] for x in both] == [2, 4]
    code, out, _ = tev(capsys, run / "checkpoints" / "step_000002", run)
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["path", "format", "tensor", "dtype", "vocab", "d_model", "mu_TEV", "sigma_TEV"]
    assert len(lines) == 4 and lines[3].startswith(str(run)) and f"{figures[4][0]:.6g}" in lines[3]


def assert_one_line_error(capsys, argv, *needles):
    code, out, err = tev(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("steadylm tev: error:"), err
    for n in needles:
        assert n in err, err


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert_one_line_error(capsys, [tmp_path / "nope.safetensors"], "no such file or folder", ".gguf")
    odd = tmp_path / "odd.safetensors"
    save_file({"encoder.proj.weight": torch.zeros(4, 4), "encoder.scale": torch.ones(4)}, str(odd))
    assert_one_line_error(capsys, [odd], "no token-embedding tensor", "encoder.proj.weight", "--tensor")
    assert_one_line_error(capsys, [odd, "--tensor", "missing.weight"], "missing.weight", "encoder.proj.weight")
    assert_one_line_error(capsys, [odd, "--tensor", "encoder.scale"], "(4,)", "2-D")
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(capsys, [tmp_path / "notes.txt"], "unsupported file type")
    assert_one_line_error(capsys, [tmp_path], "neither config.toml")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
    assert_one_line_error(capsys, [tmp_path / "broken.safetensors"], "not a readable safetensors file")
    r = tev_json(capsys, odd, "--tensor", "encoder.proj.weight")  # an explicit 2-D tensor is accepted
    assert r["mu_tev"] == 0.0
