"""Typed configuration: one small dataclass per section, TOML presets, `--set` overrides.

A config is built in one place (`load_config`): preset or TOML file, then `--set section.key=value`
overrides, then validation. Every error is a `ConfigError` whose message is one line naming the
key and what would have been valid, so the CLI can print it and exit 2.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from steadylm.errors import ConfigError
from steadylm.registry import check_choice, suggest

__all__ = ["ConfigError", "Config", "load_config", "config_from_dict", "suggest"]


def choice(default: str, options: str | tuple[str, ...]) -> Any:
    """A field chosen by name. `options` is the registry that dispatches it, as "module:NAME"
    (imported when a config is validated: those modules import this one), or the names
    themselves when the code that acts on them has no table."""
    return field(default=default, metadata={"choices": options})


def choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The valid names of a `choice` field, from its registry; None for other fields."""
    options = f.metadata.get("choices")
    if isinstance(options, str):
        module, name = options.split(":")
        options = tuple(getattr(importlib.import_module(module), name))
    return options


@dataclass
class ModelConfig:
    """GPT-2 shape and the stability variant; names follow Hugging Face GPT2Config."""

    n_layer: int = 12
    n_embd: int = 768
    n_head: int = 12
    vocab_size: int = 0  # 0: take it from the tokenizer
    block_size: int = 1024
    dropout: float = 0.0
    bias: bool = True
    layer_norm_epsilon: float = 1e-5
    attention: str = choice("mha", "steadylm.model.attention:ATTENTION")
    mlra_mode: str = choice("shared", "steadylm.model.attention:MLRA_MODES")
    mlra_rank: int = 0  # 0: the parameter-matched default of the mode
    mlra_init: str = choice("gpt2", "steadylm.model.attention:MLRA_INITS")
    mlra_out: bool = False  # also factorise the attention output projection
    qkv_init_scale: float = 1.0
    norm_layout: str = choice("pre_ln", "steadylm.model.norms:NORM_LAYOUTS")
    embed_norm: str = choice("none", "steadylm.model.norms:EMBEDDING_RECIPES")
    reparam: str = choice("none", "steadylm.model.reparam:REPARAMS")
    qk_norm: bool = False
    # Token embedding (docs/tt-embeddings.md): "dense" (nn.Embedding) or "tt", a tensor-train
    # matrix of `tt_cores` cores of rank `tt_rank`, shaped `tt_shape` ("auto", or explicit
    # [[I_1, ..., I_N], [J_1, ..., J_N]] with ΠJ = n_embd and ΠI >= vocab_size).
    embedding: str = choice("dense", ("dense", "tt"))
    tt_rank: int = 16
    tt_shape: str | list[list[int]] = "auto"
    tt_cores: int = 3
    # "tied_dense": the head reads the reconstructed matrix (one reconstruction per forward);
    # "separate": an untied dense (vocab x n_embd) head, as the paper does for its LM.
    tt_head: str = choice("tied_dense", ("tied_dense", "separate"))

    def validate(self) -> None:
        for key in ("n_layer", "n_embd", "n_head", "block_size"):
            _positive(self, "model", key)
        _at_least(self, "model", "vocab_size", 0)
        _at_least(self, "model", "mlra_rank", 0)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        if self.layer_norm_epsilon <= 0:
            raise ConfigError(
                f"model.layer_norm_epsilon: must be > 0, got {self.layer_norm_epsilon}"
            )
        if self.qkv_init_scale <= 0:
            raise ConfigError(f"model.qkv_init_scale: must be > 0, got {self.qkv_init_scale}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd: {self.n_embd} is not divisible by model.n_head={self.n_head}"
            )
        self._validate_attention_variant()
        self._validate_embedding()

    _TT_DEFAULTS = (
        ("tt_rank", 16),
        ("tt_shape", "auto"),
        ("tt_cores", 3),
        ("tt_head", "tied_dense"),
    )

    def _validate_embedding(self) -> None:
        if self.embedding != "tt":  # as for MLRA: options that would be ignored are rejected
            for key, default in self._TT_DEFAULTS:
                if getattr(self, key) != default:
                    raise ConfigError(
                        f"model.{key}={getattr(self, key)!r} only applies to "
                        f"model.embedding='tt' (got {self.embedding!r}); leave it at {default!r} "
                        "or set model.embedding='tt'"
                    )
            return
        _positive(self, "model", "tt_rank")
        _at_least(self, "model", "tt_cores", 2)
        shape = self.tt_shape
        if isinstance(shape, str):
            if shape != "auto":
                raise ConfigError(
                    f"model.tt_shape: {shape!r} is not valid; "
                    'use "auto" or [[I_1, ..., I_N], [J_1, ..., J_N]]'
                )
            return
        if len(shape) != 2 or any(len(f) != self.tt_cores or min(f, default=0) < 1 for f in shape):
            raise ConfigError(
                f"model.tt_shape: {shape!r} must be two lists of model.tt_cores={self.tt_cores} "
                "positive factors, [[I_1, ..., I_N], [J_1, ..., J_N]] "
                "(set model.tt_cores to the number of factors)"
            )
        if math.prod(shape[1]) != self.n_embd:
            raise ConfigError(
                f"model.tt_shape: width factors {shape[1]} multiply to {math.prod(shape[1])}, "
                f"not n_embd={self.n_embd}"
            )
        if self.vocab_size and math.prod(shape[0]) < self.vocab_size:
            raise ConfigError(
                f"model.tt_shape: vocabulary factors {shape[0]} multiply to {math.prod(shape[0])} "
                f"< vocab_size={self.vocab_size}"
            )

    def _validate_attention_variant(self) -> None:
        # Options of the other attention variant would be silently ignored, and a sweep over
        # them would train identical models under different names: reject them instead.
        if self.attention != "mlra":
            for key, default in (
                ("mlra_mode", "shared"),
                ("mlra_rank", 0),
                ("mlra_init", "gpt2"),
                ("mlra_out", False),
            ):
                if getattr(self, key) != default:
                    raise ConfigError(
                        f"model.{key}={getattr(self, key)!r} only applies to model.attention='mlra' "
                        f"(got {self.attention!r}); leave it at {default!r} or set model.attention='mlra'"
                    )
            return
        if self.qkv_init_scale != 1.0:
            raise ConfigError(
                f"model.qkv_init_scale={self.qkv_init_scale} is the init control for model.attention='mha'; "
                "MLRA's init is set by model.mlra_init (gpt2, variance_preserving)"
            )
        # shared factorises d -> d, per_head d -> head_dim: a larger rank is no longer low-rank.
        width, name = (
            (self.n_embd, "n_embd") if self.mlra_mode == "shared" else (self.head_dim, "head_dim")
        )
        if self.mlra_rank > width:
            raise ConfigError(
                f"model.mlra_rank={self.mlra_rank} exceeds {name}={width}, the most a {self.mlra_mode} "
                f"factorisation can use; choose 1..{width} or 0 for the parameter-matched default"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class DataConfig:
    """Where the text comes from and how it is tokenised."""

    # a named corpus ("default", "wide"; docs/corpora.md) and/or .txt/.jsonl/.parquet files and folders
    path: str | list[str] = "default"
    tokenizer: str = "gpt2"  # "gpt2" or "bpe:N" (byte-level BPE trained on the training split)
    text_field: str = "text"  # field holding the text in .jsonl/.parquet records
    val_fraction: float = 0.05  # share of documents held out for validation

    def validate(self) -> None:
        paths = [self.path] if isinstance(self.path, str) else self.path
        if not paths or any(not p for p in paths):
            raise ConfigError(
                "data.path: must be 'default', 'wide' or a non-empty list of files/folders"
            )
        tok = self.tokenizer
        if tok != "gpt2":
            n = tok.removeprefix("bpe:")
            if not tok.startswith("bpe:") or not n.isdigit() or not 257 <= int(n) <= 2**31 - 1:
                raise ConfigError(
                    f"data.tokenizer: {tok!r} is not valid; choose 'gpt2' or 'bpe:N' with N >= 257"
                )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction: must be in (0, 1), got {self.val_fraction}")


@dataclass
class TrainConfig:
    """Optimisation, precision, evaluation and checkpointing."""

    max_steps: int = 1000
    seed: int = 1337
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    weight_decay: float = (
        0.1  # applied to matrices only (embeddings included), never to biases or norms
    )
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping; the pre-clip norm is logged either way
    z_loss: float = 0.0
    batch_size: int = 32  # global sequences per optimizer step, whatever the world size
    micro_batch_size: int = 8  # sequences per forward pass per rank
    # "auto": bf16 autocast where bf16 matmuls are native (CUDA from compute capability 8.0, CPUs
    # with AVX512-BF16 or AMX), fp32 elsewhere; resolved once per run and kept on --resume.
    precision: str = choice("auto", ("auto", "fp32", "bf16", "fp16"))
    # true: stop with an error, rather than warn, when the precision asked for is emulated here.
    precision_strict: bool = False
    # torch.compile: true, false, or "auto" (on when the run's estimated eager time is at least
    # ten times the compile time; docs/performance.md states the rule).
    compile: bool | str = "auto"
    # under torchrun: "ddp" (replicated) or "fsdp" (FSDP2 fully_shard per block)
    parallel: str = choice("ddp", ("ddp", "fsdp"))
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    eval_every: int = 100  # 0 disables evaluation
    eval_batches: int = 10  # validation micro-batches per evaluation
    checkpoint_every: int = 500  # 0: only the final checkpoint
    # "every": checkpoints every checkpoint_every steps. "log": also at log-spaced steps, two per
    # doubling (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, ...: round(2^(k/2))), so early training,
    # where geometry changes fastest, is sampled as densely as late training (`analyze --over-training`).
    checkpoint_schedule: str = choice("every", ("every", "log"))
    keep_checkpoints: int = 0  # 0 keeps all; otherwise the newest N
    log_every: int = 10  # steps between host syncs that flush metrics
    # Razzhigaev et al.'s pre-training regulariser, λ·mean over blocks l of mean over tokens of
    # (1 − cos(h_l, h_{l−1})) ("cosine") or ‖h_l − h_{l−1}‖² ("mse"), h_0 the embedding output.
    # Mean over blocks, not the paper's sum, so λ means the same at any depth (paper λ = this λ / L).
    linearity_reg: float = 0.0  # λ; 0 disables it
    linearity_reg_kind: str = choice("cosine", "steadylm.train.regularizers:KINDS")

    def validate(self) -> None:
        for key in ("max_steps", "batch_size", "micro_batch_size", "log_every"):
            _positive(self, "train", key)
        for key in (
            "warmup_steps",
            "eval_every",
            "eval_batches",
            "checkpoint_every",
            "keep_checkpoints",
            "seed",
        ):
            _at_least(self, "train", key, 0)
        for key in ("lr", "eps"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key}: must be > 0, got {getattr(self, key)}")
        for key in ("min_lr", "weight_decay", "grad_clip", "z_loss", "linearity_reg"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0, got {getattr(self, key)}")
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr: {self.min_lr} exceeds train.lr={self.lr}")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"train.{key}: must be in [0, 1), got {getattr(self, key)}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.batch_size: {self.batch_size} is not divisible by "
                f"train.micro_batch_size={self.micro_batch_size}"
            )
        if isinstance(self.compile, str) and self.compile != "auto":
            raise ConfigError(
                f'train.compile: expected true, false or "auto", got {self.compile!r}'
            )


@dataclass
class MonitorConfig:
    """Always-on stability monitoring."""

    tev_every: int = 1  # steps between TEV readings; 0 disables
    # Also TEV over the most frequent, middle and rarest third of the vocabulary (by count in the
    # training split): `tev_mean/freq_hi` ... `tev_std/freq_lo`.
    tev_freq_groups: bool = False
    # Cadences keep all default monitors under 1% of a step (measured by `steadylm bench`):
    # per-block parameter norms and update ratios (they copy the weights); 0 disables
    stats_every: int = 50
    gradvar_every: int = 200  # the gradient-variance reference (K >= 2 micro-batches); 0 disables
    act_every: int = 100  # residual RMS per layer, max attention logit, output log Z; 0 disables
    # loss or grad-norm spike: "log" it, "skip" the step, or "rollback"
    on_spike: str = choice("log", ("log", "skip", "rollback"))
    spike_window: int = 128  # steps in the rolling window (OLMo-core's default)
    spike_sigma: float = 6.0  # a spike exceeds the window's mean by this many standard deviations
    max_rollbacks: int = 3  # more rollbacks than this and the run stops as diverged
    nonfinite_patience: int = 5  # non-finite steps in a row (each skipped) before the run stops
    tensorboard: bool = False  # also write scalars and TEV histograms to RUN/tensorboard

    def validate(self) -> None:
        for key in ("tev_every", "stats_every", "gradvar_every", "act_every", "max_rollbacks"):
            _at_least(self, "monitor", key, 0)
        _at_least(self, "monitor", "spike_window", 2)
        _positive(self, "monitor", "nonfinite_patience")
        if self.spike_sigma <= 0:
            raise ConfigError(f"monitor.spike_sigma: must be > 0, got {self.spike_sigma}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def validate(self) -> Config:
        for section in SECTIONS:
            validate_section(section, getattr(self, section))
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}

    def to_toml(self) -> str:
        return "\n".join(table_toml(section, values) for section, values in self.to_dict().items())


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "monitor": MonitorConfig,
}


def _positive(obj: Any, section: str, key: str) -> None:
    if getattr(obj, key) <= 0:
        raise ConfigError(f"{section}.{key}: must be > 0, got {getattr(obj, key)}")


def _at_least(obj: Any, section: str, key: str, low: int) -> None:
    if getattr(obj, key) < low:
        raise ConfigError(f"{section}.{key}: must be >= {low}, got {getattr(obj, key)}")


# TOML basic strings may not hold control characters raw: \b \t \n \f \r by name, the rest as \uXXXX.
_TOML_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def table_toml(section: str, values: dict[str, Any]) -> str:
    """One `[section]` table of TOML, ending with a blank line."""
    lines = [f"[{section}]", *(f"{k} = {toml_value(v)}" for k, v in values.items()), ""]
    return "\n".join(lines)


def toml_value(v: Any) -> str:
    """`v` (bool, int, float, str or a list of them) as a TOML value that `tomllib` reads back
    unchanged; the one writer for config.toml and for `--set` arguments."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return (
            '"'
            + "".join(
                _TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or c == "\x7f" else c)
                for c in v
            )
            + '"'
        )
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)  # int, float (inf and nan are TOML too)


def check_type(name: str, value: Any, hint: Any) -> Any:
    """Return `value` converted to `hint` if that is lossless, else raise ConfigError."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if type(value) is hint:
            return value
        raise ConfigError(f"{name}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    if isinstance(hint, types.UnionType):  # str | list[str], str | list[list[int]]
        if any(_matches(value, arm) for arm in typing.get_args(hint)):
            return value
        shown = " or ".join(_describe(arm) for arm in typing.get_args(hint))
        raise ConfigError(f"{name}: expected {shown}, got {value!r}")
    raise TypeError(f"unsupported config type {hint} for {name}")


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` is of the (str, int, list[...]) type `hint`; bool is not an int here."""
    if hint in (str, int, bool):
        return type(value) is hint
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(x, item) for x in value)
    raise TypeError(f"unsupported config type {hint}")


def _describe(hint: Any, plural: bool = False) -> str:
    if typing.get_origin(hint) is list:
        item = _describe(typing.get_args(hint)[0], plural=True)
        return ("lists of " if plural else "a list of ") + item
    names = {
        str: ("a string", "strings"),
        int: ("an integer", "integers"),
        bool: ("a boolean", "booleans"),
    }[hint]
    return names[plural]


def _shown(name: str) -> str:
    """A user-supplied name as it can be printed on one line."""
    return name if name.isprintable() and name.strip() == name and name else repr(name)


def _apply(cfg: Config, data: dict[str, Any], origin: str) -> None:
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{origin}: unknown section [{_shown(section)}]; valid sections: {', '.join(SECTIONS)}"
                + suggest(section, SECTIONS)
            )
        apply_section(getattr(cfg, section), section, values, origin)


def apply_section(sub: Any, section: str, values: Any, origin: str) -> None:
    """Set the keys of one `[section]` table on its dataclass `sub`, checking names and types.

    Shared by every config with this shape (the train config here, `[finetune]`, ...)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: [{section}] must be a table of key = value")
    hints = typing.get_type_hints(type(sub))
    names = [f.name for f in dataclasses.fields(sub)]
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{section}.{_shown(key)}: unknown key; valid keys: {', '.join(names)}"
                + suggest(key, names)
            )
        setattr(sub, key, check_type(f"{section}.{key}", value, hints[key]))


def validate_section(section: str, sub: Any) -> None:
    """Check a section's `choice` fields against their registries, then its own `validate()`."""
    for f in dataclasses.fields(sub):
        options = choices(f)
        if options is not None:
            check_choice(f"{section}.{f.name}", getattr(sub, f.name), options)
    sub.validate()


def preset_names() -> list[str]:
    return sorted(
        p.name[:-5]
        for p in resources.files("steadylm.configs").iterdir()
        if p.name.endswith(".toml")
    )


def _read_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin}: not valid TOML ({e})") from None


def read_config_source(source: str | Path) -> tuple[dict[str, Any], str]:
    """Read a preset name or a TOML file into a raw dict; returns (data, origin)."""
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"--config: no such file {str(path)!r}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--config: cannot read {str(path)!r} ({e})") from None
        return _read_toml(text, str(path)), str(path)
    names = preset_names()
    if str(source) not in names:
        raise ConfigError(
            f"--config: {str(source)!r} is neither a file nor a preset; presets: {', '.join(names)}"
            + suggest(str(source), names)
        )
    text = (
        resources.files("steadylm.configs").joinpath(f"{source}.toml").read_text(encoding="utf-8")
    )
    return _read_toml(text, f"preset {source}"), f"preset {source}"


def parse_override(item: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value); the value is read as TOML, else as a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    dotted, raw = item.split("=", 1)
    if dotted.count(".") != 1:
        raise ConfigError(
            f"--set {item!r}: expected section.key=value (one dot, e.g. model.n_layer=6)"
        )
    section, key = (s.strip() for s in dotted.split("."))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def load_config(source: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a validated Config from a preset or TOML file plus `section.key=value` overrides."""
    cfg = Config()
    if source is not None:
        data, origin = read_config_source(source)
        _apply(cfg, data, origin)
    for item in overrides:
        section, key, value = parse_override(item)
        _apply(cfg, {section: {key: value}}, "--set")
    return cfg.validate()


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _apply(cfg, data, "config")
    return cfg.validate()


# ----------------------------------------------------------------- one-section job configs

T = typing.TypeVar("T")


def load_section_config(
    cls: type[T],
    section: str,
    source: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
) -> T:
    """A validated `cls()` for a job whose config is one `[section]` table (finetune, embed,
    attack): from an optional TOML file, then `section.key=value` overrides in order (a later
    one wins)."""
    cfg = cls()
    if source is not None:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(
                f"--config: no such file {str(path)!r} (a TOML file with a [{section}] table)"
            )
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"--config: cannot read {str(path)!r} ({e})") from None
        apply_only_section(cfg, section, data, str(path))
    for item in overrides:
        name, key, value = parse_override(item)
        apply_only_section(cfg, section, {name: {key: value}}, "--set")
    validate_section(section, cfg)
    return cfg


def apply_only_section(cfg: Any, section: str, data: dict[str, Any], origin: str) -> None:
    """Apply `data`'s `[section]` table to `cfg`; any other section is an error."""
    for name, values in data.items():
        if name != section:
            raise ConfigError(
                f"{origin}: unknown section [{name}]; this config has one section, [{section}]"
                + suggest(name, [section])
            )
        apply_section(cfg, section, values, origin)


def documented(default: Any, help: str) -> Any:
    """A dataclass field with its `--help` text: the one place a job's option is described."""
    return field(default=default, metadata={"help": help})


def field_help(cls: type, name: str) -> str:
    """The `--help` text of option `name` of the dataclass `cls` (fields made by `documented`)."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)
