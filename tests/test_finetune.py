"""The fine-tuning job on tiny bases built here: each method learns, resume is exact, the
classifier loads back, and bad input stops with one line before anything is written."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from finetune_helpers import keyword_task, tiny_bert, tiny_gpt, write_jsonl
from steadylm.errors import SteadyLMError
from steadylm.finetune.config import load_finetune_config
from steadylm.finetune.export import load_classifier
from steadylm.finetune.job import FinetuneJob

FAST = [
    "finetune.batch_size=16",
    "finetune.lr=3e-3",
    "finetune.peft_lr=1e-2",
    "finetune.sparsegrad_warmup_steps=3",
    "finetune.eval_every=0",
    "finetune.log_every=1",
]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {"bert": tiny_bert(root / "bert"), "gpt": tiny_gpt(root / "gpt")}


def _cfg(base, method, *extra):
    return load_finetune_config(
        None,
        [f"finetune.base={json.dumps(str(base))}", f'finetune.method="{method}"', *FAST, *extra],
    )


@pytest.mark.parametrize("method", ["full", "lora", "sparsegrad"])
def test_each_method_learns_the_keyword_task(bases, tmp_path, method):
    task = keyword_task()
    cfg = _cfg(bases["bert"], method, "finetune.epochs=6")
    result = FinetuneJob(cfg, tmp_path / "run", task=task, progress=False).run()
    assert result["accuracy"] > 0.75  # chance is 0.5
    for key in (
        "task",
        "base",
        "method",
        "seed",
        "accuracy",
        "macro_f1",
        "n_test",
        "trainable_params",
        "peak_mem_mb",
        "steps_per_s",
    ):
        assert key in result
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == result
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "finished"
    if method == "sparsegrad":
        assert result["k"] == round(0.01 * 32 * 64) and result["hosvd_seconds"] >= 0
    if method == "lora":
        assert result["lora_rank"] == 1  # round(k / (32 + 64)) = round(20 / 96), at least 1
    # The MLP weights moved (folded back into plain linears), so the method itself trained.
    before = load_file(str(bases["bert"] / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "classifier" / "model.safetensors"))
    name = "encoder.layer.0.intermediate.dense.weight"
    assert not torch.allclose(before[name], after["bert." + name])
    # The exported classifier loads back and classifies the test split as the job did.
    model, encoder, labels = load_classifier(tmp_path / "run")
    assert labels == ("pos", "neg")
    ids, mask = encoder([e.text for e in task.test], 64)
    with torch.no_grad():
        pred = model(ids, mask).argmax(-1)
    acc = (pred == torch.tensor([e.label for e in task.test])).float().mean().item()
    assert acc == pytest.approx(result["accuracy"])


def test_steadylm_gpt_base_with_a_head(bases, tmp_path):
    task = keyword_task()
    cfg = _cfg(bases["gpt"], "sparsegrad", "finetune.epochs=8")
    result = FinetuneJob(cfg, tmp_path / "run", task=task, progress=False).run()
    assert result["accuracy"] > 0.75
    model, encoder, _ = load_classifier(tmp_path / "run" / "classifier")
    assert model(*encoder(["w1 good w2"], 32)).shape == (1, 2)


@pytest.mark.parametrize("method", ["lora", "sparsegrad"])
def test_resume_is_exact(bases, tmp_path, method):
    task = keyword_task(n_train=64)
    cfg = _cfg(bases["bert"], method, "finetune.max_steps=8", "finetune.checkpoint_every=4")
    FinetuneJob(cfg, tmp_path / "whole", task=task, progress=False).run()
    FinetuneJob(cfg, tmp_path / "split", task=task, progress=False, stop_at=4).run()
    assert json.loads((tmp_path / "split" / "status.json").read_text())["status"] == "stopped"
    FinetuneJob(cfg, tmp_path / "split", task=task, progress=False, resume=True).run()
    a = load_file(str(tmp_path / "whole" / "classifier" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "classifier" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = [
        [
            r["loss"]
            for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())
        ]
        for d in ("whole", "split")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 8


def test_bad_input_stops_before_writing(bases, tmp_path):
    task = keyword_task()
    out = tmp_path / "run"
    with pytest.raises(SteadyLMError, match="sparsegrad_k=100000 exceeds the 64x32"):
        FinetuneJob(
            _cfg(bases["bert"], "sparsegrad", "finetune.sparsegrad_k=100000"),
            out,
            task=task,
            progress=False,
        ).run()
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    with pytest.raises(SteadyLMError, match="not a model to fine-tune"):
        FinetuneJob(_cfg(not_a_model, "full"), out, task=task, progress=False).run()
    with pytest.raises(SteadyLMError, match="at least 2"):
        FinetuneJob(
            _cfg(bases["bert"], "full"), out, task=replace(task, labels=("pos",)), progress=False
        ).run()
    assert not out.exists()
    with pytest.raises(
        SteadyLMError, match="finetune.method: 'adapter' is not one of full, lora, sparsegrad"
    ):
        _cfg(bases["bert"], "adapter")
    with pytest.raises(SteadyLMError, match="unknown key"):
        load_finetune_config(None, ["finetune.epoch=3"])
    with pytest.raises(SteadyLMError, match="one section"):
        load_finetune_config(None, ["train.lr=3"])
    out.mkdir()
    (out / "x").write_text("")
    with pytest.raises(SteadyLMError, match="already holds other files"):
        FinetuneJob(_cfg(bases["bert"], "full"), out, task=task, progress=False)


def test_cli_end_to_end_and_errors(bases, tmp_path, capsys):
    pytest.importorskip("steadylm.tasks")  # the task loaders (their own branch until merged)
    from steadylm.cli import main

    data = write_jsonl(keyword_task(), tmp_path / "kw.jsonl")
    out = tmp_path / "run"
    args = [
        "finetune",
        str(bases["bert"]),
        "--task",
        str(data),
        "--method",
        "lora",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "finetune.max_steps=4",
    ]
    assert main(args) == 0
    assert "accuracy" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["method"] == "lora"
    bad = tmp_path / "bad"
    for argv, message in (
        (["--task", "no-such-task"], "unknown task"),
        (["--method", "prefix"], "is not one of full, lora, sparsegrad"),
        (["--set", "finetune.sparsegrad_k=99999999"], "exceeds"),
    ):
        code = main(
            [
                "finetune",
                str(bases["bert"]),
                "--task",
                str(data),
                "--method",
                "sparsegrad",
                "--out",
                str(bad),
                "--no-progress",
                *argv,
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not bad.exists()


def test_a_dequantised_gguf_base_exports_as_a_plain_model(tmp_path):
    """transformers keeps the GGUF quantiser on a model it dequantised to fp32 and then refuses
    save_pretrained, which is how a fine-tuned classifier is exported: the loader drops it."""
    transformers = pytest.importorskip("transformers")
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig

    from steadylm.finetune.models import _drop_gguf_quantizer

    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, num_labels=2, pad_token_id=0)  # fmt: skip
    body = transformers.LlamaForSequenceClassification(cfg)
    body.hf_quantizer = GgufHfQuantizer(GgufConfig(dequantize=True))
    with pytest.raises(ValueError, match="not serializable"):
        body.save_pretrained(tmp_path / "refused")
    _drop_gguf_quantizer(body, tmp_path / "m.gguf")
    body.save_pretrained(tmp_path / "saved")
    again = transformers.LlamaForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert torch.equal(again.score.weight, body.score.weight)
    body.model.embed_tokens.weight.data = body.model.embed_tokens.weight.data.half()
    with pytest.raises(SteadyLMError, match="stayed quantised"):
        _drop_gguf_quantizer(body, tmp_path / "m.gguf")
