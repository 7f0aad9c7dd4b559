"""`steadylm analyze` in-process on checkpoints built here: ours, a run over training, tiny HF folders."""

from __future__ import annotations

import json

import pytest
import torch
from tests.helpers import tiny_config, write_corpus

from steadylm.cli import main
from steadylm.train.schedule import is_log_step
from steadylm.train.trainer import Trainer

TOKENS = "96"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run checkpointed on the log-spaced schedule only."""
    tmp = tmp_path_factory.mktemp("analyze")
    corpus = write_corpus(tmp / "corpus", n_docs=6, words_per_doc=200)
    cfg = tiny_config(corpus, **{"train.max_steps": 8, "train.checkpoint_every": 0, "train.eval_every": 0,
                                 "train.checkpoint_schedule": "log"})
    return Trainer(cfg, tmp / "run", progress=False).fit().run_dir


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, make_text):
    path = tmp_path_factory.mktemp("text") / "sample.txt"
    path.write_text(make_text(7, 3000))
    return path


def analyze(capsys, *argv) -> tuple[int, str, str]:
    code = main(["analyze", *map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def analyze_json(capsys, *argv) -> dict:
    code, out, err = analyze(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_log_schedule_steps():
    assert [s for s in range(1, 70) if is_log_step(s)] == [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64]


def test_our_checkpoint_table_json_and_out(run_dir, text_file, tmp_path, capsys):
    r = analyze_json(capsys, run_dir, "--text", text_file, "--tokens", TOKENS, "--drop-first", "1")
    assert (r["format"], r["architecture"], r["causal"], r["step"]) == ("steadylm", "gpt", True, 8)
    assert (r["n_tokens"], r["d_model"], r["n_layer"]) == (96, 32, 2)
    assert r["chance_linearity"] == pytest.approx(32 / 96)
    assert [row["layer"] for row in r["layers"]] == [0, 1, 2]
    assert "linearity" not in r["layers"][0]
    for row in r["layers"][1:]:
        assert 0 < row["linearity"] <= 1 and 0 < row["linearity_no_residual"] <= 1 and row["norm_ratio"] > 0
        assert 0 < row["anisotropy"] <= 1 and row["intrinsic_dim"] > 0

    code, out, _ = analyze(capsys, run_dir, "--text", text_file, "--tokens", TOKENS, "--out", tmp_path / "o")
    assert code == 0 and "chance linearity d/n = 0.3333" in out and "before the final norm" in out
    assert out.count("\n    2  ") == 2  # hidden state 2 in the state table, block 2 in the block table
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"profile.json", "profile.md", "profile.png"}
    assert json.loads((tmp_path / "o" / "profile.json").read_text())["n_layer"] == 2


def test_over_training_on_a_log_spaced_run(run_dir, text_file, tmp_path, capsys):
    code, out, err = analyze(capsys, run_dir, "--over-training", "--text", text_file, "--tokens", "48",
                             "--out", tmp_path / "o")
    assert code == 0, err
    result = json.loads((tmp_path / "o" / "profile.json").read_text())
    assert [c["step"] for c in result["checkpoints"]] == [1, 2, 3, 4, 6, 8]
    assert {p.name for p in (tmp_path / "o").iterdir()} == {
        "profile.json", "over_training.md", "over_training.png", "profile_last.png"}
    assert out.count("chance linearity") == 6


def test_exported_hf_gpt2_gives_the_same_profile(run_dir, text_file, tmp_path, capsys):
    pytest.importorskip("transformers")
    assert main(["export-hf", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    ours = analyze_json(capsys, run_dir, "--text", text_file, "--tokens", TOKENS)
    theirs = analyze_json(capsys, tmp_path / "hf", "--text", text_file, "--tokens", TOKENS)
    assert (theirs["format"], theirs["architecture"], theirs["causal"]) == ("huggingface", "gpt2", True)
    for a, b in zip(ours["layers"], theirs["layers"]):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
        assert [t["text"] for t in a["massive_top"]] == [t["text"] for t in b["massive_top"]]


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_tiny_hf_folders(arch, text_file, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from steadylm.data.tokenizer import train_bpe

    tok = train_bpe([text_file.read_text()], 300)
    common = dict(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    if arch == "llama":
        model = transformers.LlamaModel(transformers.LlamaConfig(**common, num_key_value_heads=1))
    else:
        model = transformers.BertModel(transformers.BertConfig(**common))
    model.save_pretrained(tmp_path / arch)
    tok.save(tmp_path / arch / "tokenizer.json")
    r = analyze_json(capsys, tmp_path / arch, "--text", text_file, "--tokens", TOKENS)
    assert (r["architecture"], r["causal"], r["n_layer"], r["d_model"]) == (arch, arch == "llama", 3, 16)
    assert len(r["layers"]) == 4 and all(0 < row["linearity"] <= 1 for row in r["layers"][1:])


@pytest.mark.parametrize("argv, message", [
    (["nowhere"], "no such file or folder"),
    (["pypi:gpt5"], "choose one of pypi:smollm2-135m-instruct"),
    (["{run}", "--tokens", "2"], "--tokens must be >= 8"),
    (["{run}", "--drop-first", "-1"], "--drop-first must be >= 0"),
    (["{run}", "--chunks", "0"], "--chunks must be >= 1"),
    (["{run}", "--massive-ratio", "1"], "--massive-ratio must be > 1"),
    (["{run}", "--tokens", "100000"], "distinct token positions"),
    (["{text}", "--over-training"], "needs a steadylm run folder"),
    (["{text}"], "not a model this command can run"),
    (["{run}", "--device", "cuda:7"], "CUDA is not available"),
])
def test_bad_input_exits_2_with_one_line(argv, message, run_dir, text_file, capsys):
    argv = [a.format(run=run_dir, text=text_file) for a in argv]
    code, out, err = analyze(capsys, *argv, "--text", text_file)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and err.startswith("steadylm analyze: error:")


def test_hf_gpt2_folder_without_tokenizer_uses_the_gpt2_bpe(text_file, tmp_path, capsys):
    # `save_pretrained` of the model alone: config.json and weights, no tokenizer files.
    transformers = pytest.importorskip("transformers")
    from steadylm.data.tokenizer import gpt2_tokenizer

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_embd=16, n_layer=2, n_head=2, n_positions=64)
    transformers.GPT2Model(cfg).save_pretrained(tmp_path / "bare")
    code, out, err = analyze(capsys, tmp_path / "bare", "--text", text_file, "--tokens", TOKENS, "--json")
    assert code == 0, err
    assert "no tokenizer files; using the GPT-2 BPE" in err
    bare = json.loads(out)
    # The same model with the tokenizer beside it gives the same figures.
    transformers.GPT2Model(cfg).from_pretrained(tmp_path / "bare").save_pretrained(tmp_path / "full")
    gpt2_tokenizer().save(tmp_path / "full" / "tokenizer.json")
    assert analyze_json(capsys, tmp_path / "full", "--text", text_file, "--tokens", TOKENS)["layers"] == bare["layers"]


def test_hf_folder_without_a_tokenizer_steadylm_has_is_one_line(text_file, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64)
    transformers.LlamaModel(cfg).save_pretrained(tmp_path / "llama")
    code, out, err = analyze(capsys, tmp_path / "llama", "--text", text_file, "--tokens", TOKENS)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "no tokenizer for this llama model (vocab_size 300" in err and "save_pretrained(FOLDER)" in err


def test_unknown_id_sample_is_refused_with_the_choices(run_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(run_dir), "--id-sample", "types"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "'token', 'token-position', 'all'" in err


def test_id_samples_agree_on_everything_but_intrinsic_dimension(run_dir, text_file, capsys):
    token = analyze_json(capsys, run_dir, "--text", text_file, "--tokens", TOKENS, "--chunks", "4")
    ref = analyze_json(capsys, run_dir, "--text", text_file, "--tokens", TOKENS, "--chunks", "4",
                       "--id-sample", "all")
    assert token["id_sample"] == "token" and ref["id_sample"] == "all" and ref["id_tokens"] == 96
    # The generated text has a small vocabulary: the token sample holds each id once, fewer than 96.
    assert 8 < token["id_tokens"] < 96
    for a, b in zip(token["layers"], ref["layers"]):
        assert a["anisotropy"] == b["anisotropy"] and a.get("linearity") == b.get("linearity")
        assert a["nn_same_token"] == 0.0 and "intrinsic_dim_all" not in b
        assert a["intrinsic_dim_all"] == pytest.approx(b["intrinsic_dim"])
        assert a["intrinsic_dim_mle"] > 0


def test_a_tokenizer_that_pads_to_a_fixed_length_is_run_unpadded(text_file, tmp_path):
    # Sentence-transformer exports (all-MiniLM-L6-v2) pad every text to 128 tokens in tokenizer.json.
    from steadylm.analysis.models import _hf_tokenizer
    from steadylm.data.tokenizer import train_bpe

    tok = train_bpe([text_file.read_text()], 300)
    tok._backend.enable_padding(length=64, pad_id=0, pad_token="<pad>")
    tok.save(tmp_path / "tokenizer.json")
    encode, decode = _hf_tokenizer(tmp_path, tmp_path, {}, None)
    ids = encode("a stable model")
    assert 0 < len(ids) < 64 and decode(ids).strip() == "a stable model"  # padded, it would be 64


def test_gguf_loads_are_silenced_and_others_are_not(capsys):
    """transformers' GGUF dequantisation bar is a bare tqdm that its progress switch misses."""
    import logging

    from tqdm.auto import tqdm

    from steadylm.analysis.models import quiet_gguf

    log = logging.getLogger("steadylm-test-quiet-gguf")
    log.addHandler(logging.StreamHandler())  # made here, so it holds capsys's stream
    with quiet_gguf("model.Q4_1.gguf"):
        for _ in tqdm(range(3), desc="dequantising"):
            pass
        log.error("a real error")
    err = capsys.readouterr().err
    assert "dequantising" not in err and "a real error" in err
    with quiet_gguf(None):
        for _ in tqdm(range(3), desc="dequantising"):
            pass
    assert "dequantising" in capsys.readouterr().err
