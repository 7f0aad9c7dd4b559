"""Config: presets load, overrides apply, and every kind of bad input is one clear ConfigError."""

import dataclasses
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steadylm.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    preset_names,
    toml_value,
)


def test_presets_load_and_validate():
    names = preset_names()
    assert {"tiny-cpu", "gpt2-small", "gpt2-deep48"} <= set(names)
    for name in names:
        load_config(name)
    small = load_config("gpt2-small")
    assert (small.model.n_layer, small.model.n_embd, small.model.n_head, small.model.vocab_size) == (12, 768, 12, 50257)
    assert load_config("gpt2-deep48").model.n_layer == 48


def test_overrides_are_typed_toml_values():
    cfg = load_config("tiny-cpu", ["model.n_layer=7", "train.lr=1e-3", "model.attention=mlra", "model.bias=false",
                                   'data.path=["a.txt", "b"]'])
    assert cfg.model.n_layer == 7 and cfg.train.lr == 1e-3 and cfg.model.attention == "mlra"
    assert cfg.model.bias is False and cfg.data.path == ["a.txt", "b"]
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # int accepted for a float key


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(st.text(max_size=5), max_size=3), st.booleans(), st.integers(),
                 st.floats(allow_nan=False)))
def test_toml_value_reads_back_unchanged(value):
    # Control characters (tab, newline, NUL, DEL, ...) included: TOML forbids them raw in strings.
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_config_with_control_characters_round_trips():
    paths = ["a\tb", "c\nd", 'e\x00\x7f"\\']
    cfg = load_config(None, ["data.path=" + toml_value(paths)])
    assert cfg.data.path == paths
    assert config_from_dict(tomllib.loads(cfg.to_toml())) == cfg


def test_toml_round_trip(tmp_path):
    cfg = load_config("tiny-cpu", ["model.attention=mlra", 'data.path=["x.txt"]'])
    p = tmp_path / "c.toml"
    p.write_text(cfg.to_toml())
    assert load_config(p) == cfg


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.n_layers=3"], "model.n_layers: unknown key; valid keys: .*did you mean 'n_layer'"),
        (["modle.n_layer=3"], "unknown section \\[modle\\].*did you mean 'model'"),
        (["model.n_layer=three"], "model.n_layer: expected int, got str"),
        (["model.n_layer=2.5"], "model.n_layer: expected int, got float"),
        (["model.bias=1"], "model.bias: expected bool"),
        (["train.max_steps=-1"], "train.max_steps: must be > 0"),
        (["model.n_head=0"], "model.n_head: must be > 0"),
        (["model.n_embd=100", "model.n_head=3"], "model.n_embd: 100 is not divisible by model.n_head=3"),
        (["train.batch_size=10", "train.micro_batch_size=4"], "not divisible by train.micro_batch_size=4"),
        (["model.attention=mlr"], "model.attention: 'mlr' is not one of mha, mlra .*did you mean 'mlra'"),
        (["train.precision=fp8"], "train.precision: 'fp8' is not one of auto, fp32, bf16, fp16"),
        (["train.compile=yes"], "train.compile: expected true, false or \"auto\", got 'yes'"),
        (["train.compile=1"], "train.compile: expected a boolean or a string, got 1"),
        (["data.tokenizer=bpe:x"], "data.tokenizer: 'bpe:x' is not valid"),
        (["train.min_lr=1", "train.lr=0.1"], "train.min_lr: 1.0 exceeds train.lr=0.1"),
        (["model.dropout=1.5"], "model.dropout: must be in \\[0, 1\\)"),
        (["n_layer=3"], "expected section.key=value"),
        (["model.n_layer"], "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        load_config("tiny-cpu", overrides)
    assert "\n" not in str(e.value)


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a preset; presets: .*did you mean 'tiny-cpu'"):
        load_config("tiny-cup")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nn_layer = 2")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(binary)


_SECTIONS = {s: list(Config().to_dict()[s]) for s in Config().to_dict()}
_values = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(),
                    st.lists(st.integers(), max_size=2))


@settings(max_examples=200, deadline=None)
@given(section=st.sampled_from(sorted(_SECTIONS) + ["bogus"]), key=st.text(min_size=1, max_size=12), value=_values)
def test_arbitrary_input_is_accepted_or_one_line_error(section, key, value):
    """Any key/value either validates or raises ConfigError with one line; never another exception."""
    keys = _SECTIONS.get(section, [])
    if keys and key[0] in "abcdefghijklmnopqrstuvwxyz":
        key = keys[hash(key) % len(keys)]  # half the time hit a real key with a random value
    try:
        config_from_dict({section: {key: value}})
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)


def test_choices_and_their_error_come_from_the_dispatch_tables(monkeypatch):
    from steadylm.model import attention, norms

    assert [f.name for f in dataclasses.fields(Config().model) if f.metadata.get("choices")] == [
        "attention", "mlra_mode", "mlra_init", "norm_layout", "embed_norm", "reparam", "embedding", "tt_head"]
    # A new entry in the table is a valid name at once, listed in the error with the others.
    monkeypatch.setitem(attention.ATTENTION._entries, "toy", attention.MultiHeadAttention)
    assert load_config(None, ["model.attention=toy"]).model.attention == "toy"
    with pytest.raises(ConfigError,
                       match=r"^model.attention: 'tyo' is not one of mha, mlra, toy \(did you mean 'toy'\?\)$"):
        load_config(None, ["model.attention=tyo"])
    with pytest.raises(ConfigError,
                       match=r"^model.norm_layout: 'x' is not one of " + ", ".join(norms.NORM_LAYOUTS) + "$"):
        load_config(None, ["model.norm_layout=x"])


def test_compile_takes_true_false_or_auto():
    assert load_config(None, []).train.compile == "auto"
    assert load_config(None, ["train.compile=auto"]).train.compile == "auto"
    assert load_config(None, ["train.compile=true"]).train.compile is True
    assert load_config(None, ["train.compile=false"]).train.compile is False
