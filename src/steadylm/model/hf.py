"""Hugging Face GPT-2 interop: load an HF folder or one of our checkpoints, export to HF.

Our parameter names are GPT-2's; the one layout difference is that HF's Conv1D stores the
weights of `c_attn`, `c_proj` and `c_fc` as (in, out) where our nn.Linear stores (out, in).
HF also keeps a causal-mask buffer `attn.bias` in old checkpoints, which carries no weights.
A TT embedding (`model.embedding = "tt"`) is exported as the dense matrix its cores make, and a
separate TT head as an untied `lm_head.weight` (`tie_word_embeddings = false`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from steadylm.config import Config, ModelConfig, config_from_dict
from steadylm.errors import CheckpointError
from steadylm.model.gpt import GPT
from steadylm.model.tied_head import drop_tied_head, with_tied_head
from steadylm.model.tt_embedding import densify_state_dict
from steadylm.rundir import CONFIG, resolve_checkpoint

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def is_gpt2_compatible(cfg: ModelConfig) -> str | None:
    """None if the config is plain GPT-2, else the reason it cannot be expressed as GPT2LMHeadModel."""
    plain = dict(
        attention="mha", norm_layout="pre_ln", embed_norm="none", reparam="none", qk_norm=False
    )
    for key, value in plain.items():
        if getattr(cfg, key) != value:
            return f"model.{key}={getattr(cfg, key)!r} has no GPT2LMHeadModel equivalent (needs {value!r})"
    # Init-only options (qkv_init_scale) leave the architecture GPT-2's; a TT embedding is a
    # parametrisation of GPT-2's matrix and exports as that matrix.
    return None


def to_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (dense) GPT state dict -> GPT2LMHeadModel's (Conv1D weights transposed, the head
    included: the tied wte unless the state dict has an untied one)."""
    out = {}
    for name, t in sd.items():
        out[name] = t.t().contiguous() if name.endswith(_CONV1D) else t.contiguous()
    return with_tied_head(out)


def from_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict -> ours. Accepts the `transformer.` prefix or bare GPT2Model names."""
    out = {}
    for name, t in sd.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints, not weights ("c_attn.bias" is kept)
        key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        out[key] = t.t() if key.endswith(_CONV1D) else t
    return drop_tied_head(out)


def model_config_from_hf(hf: dict) -> ModelConfig:
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(
            f"Hugging Face model_type {hf.get('model_type')!r} is not supported by load_model; "
            "it loads GPT-2 folders (use `steadylm tev` for other architectures)"
        )
    act = hf.get("activation_function", "gelu_new")
    if act not in _HF_ACTIVATIONS:
        raise CheckpointError(
            f"activation_function {act!r} is not supported; GPT-2 uses one of {_HF_ACTIVATIONS}"
        )
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise CheckpointError(f"n_inner={hf['n_inner']} is not supported; GPT-2 uses 4 * n_embd")
    if hf.get("tie_word_embeddings", True) is False:
        raise CheckpointError("untied GPT-2 heads are not supported (tie_word_embeddings=false)")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise CheckpointError(f"{flag}=true is not supported")
    if not hf.get("scale_attn_weights", True):
        raise CheckpointError("scale_attn_weights=false is not supported")
    return ModelConfig(
        n_layer=hf["n_layer"],
        n_embd=hf["n_embd"],
        n_head=hf["n_head"],
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        dropout=0.0,
        bias=True,
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
    )


def hf_config_dict(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": cfg.embedding == "dense" or cfg.tt_head == "tied_dense",
        "use_cache": True,
        "torch_dtype": "float32",
    }


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    st = sorted(folder.glob("*.safetensors"))
    if st:
        sd: dict[str, torch.Tensor] = {}
        for f in st:
            sd.update(load_file(str(f)))
        return sd
    pt = folder / "pytorch_model.bin"
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder}: no *.safetensors or pytorch_model.bin weights")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """An eval-mode GPT from our run dir or checkpoint folder, or a Hugging Face GPT-2 folder.

    The model maps token ids (B, T) to logits (B, T, V) in fp32.
    """
    path = resolve_checkpoint(Path(path))
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a steadylm run/checkpoint or Hugging Face folder")
    if (path / CONFIG).is_file():
        cfg = read_checkpoint_config(path).model
        sd = load_file(str(path / "model.safetensors"))
    elif (path / "config.json").is_file():
        cfg = model_config_from_hf(json.loads((path / "config.json").read_text()))
        sd = from_hf_state_dict(_read_hf_weights(path))
    else:
        raise CheckpointError(
            f"{path}: neither config.toml (steadylm) nor config.json (Hugging Face) found"
        )
    model = GPT(cfg)
    missing, unexpected = model.load_state_dict(with_tied_head(sd), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device).eval()


def read_checkpoint_config(ckpt: Path) -> Config:
    import tomllib

    data = tomllib.loads((ckpt / CONFIG).read_text())
    if "finetune" in data:  # the other job's checkpoints: a classifier, not a language model
        raise CheckpointError(
            f"{ckpt}: a fine-tuning run's checkpoint; load the classifier with "
            "steadylm.load_classifier(RUN) (or RUN/classifier as a Hugging Face folder)"
        )
    return config_from_dict(data)


def export_hf(path: str | Path, out: str | Path) -> Path:
    """Write a folder that `GPT2LMHeadModel.from_pretrained` loads with equal logits."""
    src = resolve_checkpoint(Path(path))
    if not (src / CONFIG).is_file():
        raise CheckpointError(f"{src}: not a steadylm checkpoint (no config.toml)")
    cfg = read_checkpoint_config(src)
    reason = is_gpt2_compatible(cfg.model)
    if reason:
        raise CheckpointError(f"cannot export to Hugging Face GPT-2: {reason}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: output folder exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    sd = load_file(str(src / "model.safetensors"))
    if cfg.model.embedding == "tt":
        sd = densify_state_dict(cfg.model, sd)
    # A tied head stays out: transformers re-ties it from config.tie_word_embeddings.
    sd = drop_tied_head(to_hf_state_dict(sd))
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config_dict(cfg.model), indent=2) + "\n")
    tok = src / "tokenizer.json"
    if tok.is_file():
        (out / "tokenizer.json").write_bytes(tok.read_bytes())
    return out
