"""A fine-tuned classifier as a folder of its own, and `load_classifier` to read it back.

    classifier/
        classifier.json     labels, padding id, max_length, kind, base, task, method
        tokenizer.json      the base's tokenizer (special tokens included)
        config.json + model.safetensors    kind "huggingface": a folder that
                            transformers' AutoModelForSequenceClassification loads as it is
        config.toml + model.safetensors    kind "steadylm": our GPT's [model] section and the
                            GPTClassifier weights (tied LM head left out; it is unused)

LoRA is merged and SparseGrad folded back into plain linear layers before export, so a classifier
needs neither peft nor steadylm's SparseGrad code to run.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import tokenizers
import torch
from safetensors.torch import load_file, save_file

from steadylm.config import table_toml
from steadylm.errors import SteadyLMError
from steadylm.finetune.models import Classifier, GPTClassifier, TextEncoder
from steadylm.fsutil import atomic_dir

if TYPE_CHECKING:
    from steadylm.finetune.config import FinetuneConfig
    from steadylm.finetune.models import LoadedBase

MANIFEST = "classifier.json"


def export_classifier(
    model: Classifier, base: LoadedBase, labels, cfg: FinetuneConfig, out: Path
) -> Path:
    """Write `model` (already folded: plain layers only) into the folder `out`, atomically."""
    meta = {
        "kind": base.kind,
        "labels": list(labels),
        "pad_id": base.encoder.pad_id,
        "max_length": min(cfg.max_length, base.max_length),
        "base": cfg.base,
        "task": cfg.task,
        "method": cfg.method,
        "pooling": cfg.pooling if base.kind == "steadylm" else None,
    }
    if out.exists():  # a re-run of the final step after a resume
        import shutil

        shutil.rmtree(out)
    with atomic_dir(out) as tmp:
        if base.kind == "huggingface":
            model.body.save_pretrained(tmp)  # type: ignore[operator]  # Module.__getattr__ stub
            for f in tmp.iterdir():  # transformers writes the weights owner-readable only
                f.chmod(0o644)
        else:
            body = model.body
            assert isinstance(body, GPTClassifier)  # the steadylm kind's body
            sd = {
                k: v.detach().to("cpu", torch.float32).contiguous()
                for k, v in body.state_dict().items()
                if k != "gpt.lm_head.weight"
            }  # tied to the token embedding, unused by the classifier
            save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            (tmp / "config.toml").write_text(
                table_toml("model", dataclasses.asdict(body.gpt.config))
            )
        base.encoder.tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n")
    return out


def load_classifier(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Classifier, TextEncoder, tuple[str, ...]]:
    """(model, encoder, labels) from a finetune run folder, its `classifier/` folder, or a plain
    Hugging Face sequence-classifier folder (config.json naming a `*ForSequenceClassification`
    architecture, weights, a tokenizer; labels from its `id2label`).

    `model(input_ids, attention_mask)` maps (B, T) to logits (B, len(labels)) in eval mode;
    `encoder(texts, max_length)` gives those two tensors for a list of texts, and
    `encoder.tokenizer` is the `tokenizers.Tokenizer` (ids <-> tokens, for trigger searches).
    """
    folder = Path(path)
    if (folder / "classifier" / MANIFEST).is_file():
        folder = folder / "classifier"
    if not (folder / MANIFEST).is_file() and (folder / "config.json").is_file():
        return _huggingface_classifier(folder, device)
    if not (folder / MANIFEST).is_file():
        hint = (
            " (the run has not finished: no classifier/ yet)"
            if (folder / "config.toml").is_file()
            else ""
        )
        raise SteadyLMError(f"{path}: not a fine-tuned classifier (no {MANIFEST}){hint}")
    meta = json.loads((folder / MANIFEST).read_text())
    labels = tuple(meta["labels"])
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    if meta["kind"] == "huggingface":
        from steadylm.analysis.models import _first_line, _transformers

        tf = _transformers()
        try:
            body = tf.AutoModelForSequenceClassification.from_pretrained(
                folder, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError) as e:
            raise SteadyLMError(
                f"{folder}: transformers cannot load it ({_first_line(e)})"
            ) from None
    else:
        from steadylm.config import ModelConfig
        from steadylm.model.gpt import GPT

        model_cfg = ModelConfig(**tomllib.loads((folder / "config.toml").read_text())["model"])
        body = GPTClassifier(GPT(model_cfg), len(labels), meta.get("pooling") or "last")
        sd = load_file(str(folder / "model.safetensors"))
        missing, unexpected = body.load_state_dict(sd, strict=False)
        if [k for k in missing if k != "gpt.lm_head.weight"] or unexpected:
            raise SteadyLMError(
                f"{folder}: weights do not match the classifier (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
    model = Classifier(body, meta["kind"]).to(device).eval()
    return model, TextEncoder(tok, int(meta["pad_id"])), labels


def _huggingface_classifier(
    folder: Path, device: str | torch.device
) -> tuple[Classifier, TextEncoder, tuple[str, ...]]:
    """A Hugging Face `*ForSequenceClassification` folder that `steadylm finetune` did not write."""
    from steadylm.analysis.models import _first_line, _transformers
    from steadylm.finetune.models import _hf_tokenizer

    tf = _transformers()
    try:
        config = tf.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise SteadyLMError(
            f"{folder}: transformers cannot read config.json ({_first_line(e)})"
        ) from None
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        # Loading a bare encoder would attach a random head: a meaningless victim.
        raise SteadyLMError(
            f"{folder}: not a sequence classifier (architectures: {', '.join(archs) or 'none'}); "
            "give a `steadylm finetune` run or a *ForSequenceClassification folder"
        )
    try:
        body = tf.AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise SteadyLMError(f"{folder}: transformers cannot load it ({_first_line(e)})") from None
    tok, pad_id = _hf_tokenizer(tf, folder, folder, {}, config)
    if body.config.pad_token_id is None:  # decoders find the last real token by the padding id
        body.config.pad_token_id = pad_id
    labels = tuple(str(config.id2label[i]) for i in range(config.num_labels))
    model = Classifier(body, "huggingface").to(device).eval()
    return model, TextEncoder(tok, pad_id), labels
