"""Architecture variants: each test checks the property that makes a variant what it is, and would
fail if the option were ignored. Tiny shapes, CPU, fp32."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lm_loss_reference import lm_loss
from steadylm.config import ConfigError, ModelConfig
from steadylm.model import attention as attention_mod
from steadylm.model.attention import build_attention, mlra_rank
from steadylm.model.gpt import GPT
from steadylm.model.norms import norm_layout
from steadylm.model.reparam import SigmaReparam, SigmaReparamLinear

V = 97


def cfg_of(**kw) -> ModelConfig:
    shape = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=V, block_size=32)
    shape.update(kw)
    cfg = ModelConfig(**shape)
    cfg.validate()
    return cfg


def model_of(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg_of(**kw)).eval()


def tokens(seed=0, B=2, T=32):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def attn_params(model: GPT) -> int:
    return sum(p.numel() for p in model.transformer.h[0].attn.parameters())


VARIANTS = [
    dict(attention="mlra"),
    dict(attention="mlra", mlra_mode="per_head", mlra_out=True, mlra_init="variance_preserving"),
    dict(qkv_init_scale=0.3),
    dict(norm_layout="post_ln"),
    dict(norm_layout="sub_ln"),
    dict(norm_layout="deepnorm"),
    dict(embed_norm="scaled"),
    dict(embed_norm="layernorm"),
    dict(qk_norm=True),
    dict(reparam="sigma"),
    dict(reparam="sigma", attention="mlra", mlra_mode="per_head", mlra_out=True, norm_layout="sub_ln", qk_norm=True),
]


# ----------------------------------------------------------------------------- structure


def test_default_model_is_exactly_gpt2():
    model = model_of(n_layer=1)
    block = "transformer.h.0."
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
                "lm_head.weight"}
    for name in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
        expected |= {f"{block}{name}.weight", f"{block}{name}.bias"}
    assert set(model.state_dict()) == expected
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(("c_attn", "c_proj", "c_fc")))
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * 64, 64)  # nn.Linear (out, in)
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_state_dict_round_trips(kw):
    model = model_of(**kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.after_optimizer_step()
    again = model_of(seed=1, **kw)
    again.load_state_dict(model.state_dict())
    idx = tokens()
    assert torch.equal(again(idx), model(idx))
    assert again.lm_head.weight is again.transformer.wte.weight


# ----------------------------------------------------------------------------- MLRA


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_embd,n_head", [(64, 4), (96, 3), (128, 8)])
def test_mlra_shared_has_mhas_parameter_count(n_embd, n_head, bias):
    mha = model_of(n_embd=n_embd, n_head=n_head, bias=bias)
    for out in (False, True):
        mlra = model_of(n_embd=n_embd, n_head=n_head, bias=bias, attention="mlra", mlra_out=out)
        assert mlra.transformer.h[0].attn.rank == n_embd // 2
        assert mlra.num_parameters() == mha.num_parameters()
        assert attn_params(mlra) == attn_params(mha)


@pytest.mark.parametrize("n_embd,n_head", [(64, 4), (96, 3), (128, 8), (64, 64)])
def test_mlra_per_head_is_parameter_matched_within_h_d_plus_dhead(n_embd, n_head):
    d, h, hs = n_embd, n_head, n_embd // n_head
    mha = attn_params(model_of(n_embd=d, n_head=h, bias=False))
    for out, projections in ((False, 3), (True, 4)):
        model = model_of(n_embd=d, n_head=h, bias=False, attention="mlra", mlra_mode="per_head", mlra_out=out)
        attn = model.transformer.h[0].attn
        r = max(1, d * hs // (d + hs))
        assert attn.rank == r and attn.c_attn_up.weight.shape == (3 * h, hs, r)  # one factorisation per head
        assert abs(attn_params(model) - mha) <= projections * h * (d + hs)


def test_mlra_rank_option_sets_the_rank():
    model = model_of(attention="mlra", mlra_rank=8)
    attn = model.transformer.h[0].attn
    assert attn.c_attn_down.weight.shape == (3 * 8, 64) and attn.c_attn_up.weight.shape == (3, 64, 8)
    assert attn_params(model) == 3 * 2 * 64 * 8 + 3 * 64 + 64 * 64 + 64


@pytest.mark.parametrize("mode", ["shared", "per_head"])
def test_mlra_computes_w_up_times_w_down(mode):
    """With factors that multiply out to MHA's weights, MLRA's forward equals MHA's."""
    mha = model_of(seed=3)
    hs = 16
    mlra = model_of(seed=4, attention="mlra", mlra_mode=mode, mlra_rank=64 if mode == "shared" else hs)
    sd = {k: v for k, v in mha.state_dict().items() if ".attn.c_attn." not in k}
    for i in range(2):
        w = mha.state_dict()[f"transformer.h.{i}.attn.c_attn.weight"]  # (3C, C)
        b = mha.state_dict()[f"transformer.h.{i}.attn.c_attn.bias"]
        if mode == "shared":  # down = I, up = W_q, W_k, W_v
            down, up = torch.eye(64).repeat(3, 1), w.view(3, 64, 64)
        else:  # per head: down = that head's rows of W, up = I
            down, up = w, torch.eye(hs).repeat(12, 1, 1)
        sd[f"transformer.h.{i}.attn.c_attn_down.weight"] = down
        sd[f"transformer.h.{i}.attn.c_attn_up.weight"] = up
        sd[f"transformer.h.{i}.attn.c_attn_up.bias"] = b
    mlra.load_state_dict(sd)
    idx = tokens()
    torch.testing.assert_close(mlra(idx), mha(idx), atol=1e-5, rtol=1e-5)


def _branch_variance(seed: int, **kw) -> float:
    """Variance of one attention branch's output at init, on unit-variance input (what ln_1 gives)."""
    cfg = cfg_of(n_layer=1, n_embd=128, n_head=2, **kw)
    torch.manual_seed(seed)
    attn = build_attention(cfg, norm_layout(cfg))
    attn.init_weights(norm_layout(cfg))
    x = torch.randn(8, 32, 128, generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        return attn(x).var().item()


def _variance_ratio(**kw) -> float:
    seeds = range(4)
    return sum(_branch_variance(s, **kw) for s in seeds) / sum(_branch_variance(s) for s in seeds)


@pytest.mark.parametrize("mode", ["shared", "per_head"])
def test_mlra_gpt2_init_shrinks_branch_variance_by_r_sigma2(mode):
    r = mlra_rank(cfg_of(n_embd=128, n_head=2, attention="mlra", mlra_mode=mode))
    expected = r * 0.02**2  # 64 * 4e-4 = 0.0256 shared, 42 * 4e-4 per head
    ratio = _variance_ratio(attention="mlra", mlra_mode=mode)
    assert expected / 1.2 < ratio < expected * 1.2, (ratio, expected)
    # factorising the output projection too applies the same shrink a second time
    ratio_out = _variance_ratio(attention="mlra", mlra_mode=mode, mlra_out=True)
    assert expected**2 / 1.3 < ratio_out < expected**2 * 1.3, (ratio_out, expected**2)


@pytest.mark.parametrize("kw", [dict(mlra_mode="shared"), dict(mlra_mode="per_head"), dict(mlra_out=True),
                                dict(mlra_mode="per_head", mlra_out=True)])
def test_mlra_variance_preserving_init_keeps_branch_variance(kw):
    ratio = _variance_ratio(attention="mlra", mlra_init="variance_preserving", **kw)
    assert 0.85 < ratio < 1.15, ratio


def test_qkv_init_scale_control_matches_mlra_init_variance():
    r = 64  # mlra_rank default for n_embd=128, shared
    control = _variance_ratio(qkv_init_scale=math.sqrt(r) * 0.02)
    assert abs(control / (r * 0.02**2) - 1) < 0.1, control


# ----------------------------------------------------------------------------- init control


@pytest.mark.parametrize("layout", ["pre_ln", "deepnorm"])
def test_qkv_init_scale_scales_q_k_v_std_only(layout):
    base = model_of(n_embd=128, norm_layout=layout).transformer.h[0].attn
    scaled = model_of(n_embd=128, norm_layout=layout, qkv_init_scale=0.25).transformer.h[0].attn
    for i in range(3):  # q, k, v slices of the fused weight
        ratio = scaled.c_attn.weight[i * 128:(i + 1) * 128].std() / base.c_attn.weight[i * 128:(i + 1) * 128].std()
        assert abs(ratio - 0.25) < 0.01, ratio
    assert abs(scaled.c_proj.weight.std() / base.c_proj.weight.std() - 1) < 0.02


# ----------------------------------------------------------------------------- σReparam


def _reparametrised_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "sigma", None), SigmaReparam)]


def _blocks(module) -> torch.Tensor:
    return module.weight.detach().reshape(module.sigma.blocks, -1, module.weight.shape[-1])


def test_sigma_reparam_starts_at_w0_with_gamma_sigma_w0():
    model = model_of(reparam="sigma", attention="mlra", mlra_mode="per_head", mlra_out=True)
    layers = _reparametrised_layers(model)
    names = {n.split(".", 3)[-1] for n, _ in layers}
    assert names == {"attn.c_attn_down", "attn.c_attn_up", "attn.c_proj_down", "attn.c_proj_up", "mlp.c_fc",
                     "mlp.c_proj"}
    for _name, m in layers:
        torch.testing.assert_close(m.sigma.gamma.detach(), torch.linalg.matrix_norm(_blocks(m), ord=2))
        torch.testing.assert_close(m.sigma(m.weight), m.weight, rtol=1e-5, atol=1e-7)
    # Ŵ = W₀ at init: the same forward as the plain model with the same raw weights
    plain = model_of(attention="mlra", mlra_mode="per_head", mlra_out=True)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".sigma." not in k})
    torch.testing.assert_close(model(tokens()), plain(tokens()), rtol=1e-4, atol=1e-5)


def test_sigma_reparam_effective_spectral_norm_is_gamma_after_power_iteration():
    model = model_of(reparam="sigma")
    with torch.no_grad():  # as after training: weights moved away from init and grew a top direction
        for name, p in model.named_parameters():
            if p.dim() >= 2 and ".sigma." not in name:
                a, b = torch.randn(p.shape[0], 1), torch.randn(1, p.shape[-1])
                p.add_(0.02 * torch.randn_like(p) + 0.01 * a @ b)
            if name.endswith("sigma.gamma"):
                p.copy_(torch.rand_like(p) + 0.5)
    layers = _reparametrised_layers(model)
    fused = model.transformer.h[0].attn.c_attn
    assert isinstance(fused, SigmaReparamLinear) and fused.sigma.blocks == 3  # q, k, v each their own σ
    stale = [torch.linalg.matrix_norm(m.sigma(m.weight).detach().reshape(_blocks(m).shape), ord=2) for _, m in layers]
    for _ in range(100):
        model.after_optimizer_step()
    for (name, m), before in zip(layers, stale):
        w_eff = m.sigma(m.weight).detach().reshape(_blocks(m).shape)
        torch.testing.assert_close(torch.linalg.matrix_norm(w_eff, ord=2), m.sigma.gamma.detach(), rtol=1e-4, atol=0)
        assert not torch.allclose(before, m.sigma.gamma.detach(), rtol=1e-3), name  # the iteration did the work


def test_sigma_reparam_forward_is_pure_and_state_is_checkpointed():
    model = model_of(reparam="sigma").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model(tokens()).sum().backward()
    model(tokens())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # forward never updates u, v
    fc = model.transformer.h[0].mlp.c_fc
    assert fc.sigma.gamma.grad is not None and fc.sigma.gamma.grad.abs().sum() > 0
    assert {"u", "v"} <= {n.rsplit(".", 1)[-1] for n, _ in model.named_buffers()}
    with torch.no_grad():
        fc.weight.add_(0.1 * torch.randn_like(fc.weight))
    model.after_optimizer_step()
    assert not torch.equal(state["transformer.h.0.mlp.c_fc.sigma.u"],
                           model.state_dict()["transformer.h.0.mlp.c_fc.sigma.u"])


def test_sigma_reparam_excludes_the_tied_embedding():
    model = model_of(reparam="sigma")
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.transformer.wte.weight
    assert not any(n.startswith(("transformer.wte", "transformer.wpe", "lm_head"))
                   for n, _ in _reparametrised_layers(model))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(3.0)  # no σ anywhere rescales it back
        idx = tokens()
        torch.testing.assert_close(model(idx), model.hidden_states(idx) @ model.transformer.wte.weight.T)


# ----------------------------------------------------------------------------- norm layouts


def _std(t: torch.Tensor) -> float:
    return t.detach().std().item()


def test_deepnorm_alpha_beta_and_xavier_init():
    N, d = 3, 128
    model = model_of(n_layer=N, n_embd=d, norm_layout="deepnorm")
    alpha, beta = (2 * N) ** 0.25, (8 * N) ** -0.25
    block = model.transformer.h[1]
    assert block.alpha == pytest.approx(alpha) and block.post_norm
    assert isinstance(model.transformer.ln_f, nn.Identity)
    xavier = lambda fi, fo: math.sqrt(2 / (fi + fo))  # noqa: E731
    w = block.attn.c_attn.weight
    expected = {
        "q": (w[:d], xavier(d, d)), "k": (w[d:2 * d], xavier(d, d)), "v": (w[2 * d:], beta * xavier(d, d)),
        "attn.c_proj": (block.attn.c_proj.weight, beta * xavier(d, d)),
        "mlp.c_fc": (block.mlp.c_fc.weight, beta * xavier(d, 4 * d)),
        "mlp.c_proj": (block.mlp.c_proj.weight, beta * xavier(4 * d, d)),
    }
    for name, (t, std) in expected.items():  # β only, no GPT-2 1/sqrt(2N) on top
        assert abs(_std(t) / std - 1) < 0.03, (name, _std(t), std)
    x = torch.randn(2, 8, d)
    with torch.no_grad():
        h = block.ln_1(alpha * x + block.attn(x))
        torch.testing.assert_close(block(x), block.ln_2(alpha * h + block.mlp(h)))


def test_sub_ln_extra_norms_and_magneto_init():
    N, d = 3, 128
    model = model_of(n_layer=N, n_embd=d, norm_layout="sub_ln")
    gamma = math.sqrt(math.log(2 * N))
    block = model.transformer.h[0]
    assert block.attn.ln_sub.normalized_shape == (d,) and block.mlp.ln_sub.normalized_shape == (4 * d,)
    xavier = lambda fi, fo: math.sqrt(2 / (fi + fo))  # noqa: E731
    w = block.attn.c_attn.weight
    for t, std in ((w[:d], xavier(d, d)), (w[d:2 * d], xavier(d, d)), (w[2 * d:], gamma * xavier(d, d)),
                   (block.attn.c_proj.weight, gamma * xavier(d, d)), (block.mlp.c_fc.weight, gamma * xavier(d, 4 * d)),
                   (block.mlp.c_proj.weight, gamma * xavier(4 * d, d))):
        assert abs(_std(t) / std - 1) < 0.03, (_std(t), std)
    # the inputs of both output projections are layer-normalised
    seen = {}
    for name in ("attn", "mlp"):
        getattr(block, name).c_proj.register_forward_hook(lambda m, a, o, name=name: seen.__setitem__(name, a[0]))
    model(tokens())
    for _name, h in seen.items():
        torch.testing.assert_close(h.mean(-1), torch.zeros_like(h.mean(-1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(h.var(-1, unbiased=False), torch.ones_like(h.mean(-1)), atol=1e-3, rtol=0)


def test_post_ln_normalises_after_the_residual_with_gpt2_init():
    model = model_of(norm_layout="post_ln")
    block = model.transformer.h[0]
    assert block.alpha == 1.0 and isinstance(model.transformer.ln_f, nn.Identity)
    assert abs(_std(block.attn.c_attn.weight) / 0.02 - 1) < 0.05
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        h = block.ln_1(x + block.attn(x))
        torch.testing.assert_close(block(x), block.ln_2(h + block.mlp(h)))


# ----------------------------------------------------------------------------- embeddings and QK-norm


def test_embedding_scaled_and_layernorm():
    idx = tokens()
    base = model_of()
    raw = base.transformer.wte(idx) + base.transformer.wpe(torch.arange(32))
    scaled = model_of(embed_norm="scaled")
    torch.testing.assert_close(scaled.embed(idx), raw * math.sqrt(64))
    normed = model_of(embed_norm="layernorm")
    e = normed.embed(idx)
    torch.testing.assert_close(e, F.layer_norm(raw, (64,)), rtol=1e-5, atol=1e-5)
    var = raw.var(-1, unbiased=False)
    torch.testing.assert_close(e.var(-1, unbiased=False), var / (var + 1e-5))  # unit variance, up to LN's eps
    assert isinstance(normed.transformer.ln_emb, nn.LayerNorm)


def test_qk_norm_layer_normalises_each_heads_q_and_k(monkeypatch):
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q, k))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(attention_mod.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model_of(qk_norm=True)(tokens())
        q, k = seen[0]
        assert q.shape == (2, 4, 32, 16)  # (B, nh, T, hs): normalised per head
        for t in (q, k):
            torch.testing.assert_close(t.mean(-1), torch.zeros_like(t.mean(-1)), atol=1e-5, rtol=0)
            # unit variance up to LayerNorm's eps (q's raw variance per head is about d·0.02² here)
            torch.testing.assert_close(t.var(-1, unbiased=False), torch.ones_like(t.mean(-1)), atol=1e-2, rtol=0)
        seen.clear()
        model_of()(tokens())
        assert seen[0][0].var(-1).mean() < 0.5  # without it q is far from unit variance


# ----------------------------------------------------------------------------- forward vs baseline


@pytest.mark.parametrize(
    "kw,differs",
    [
        (dict(norm_layout="post_ln"), True),
        (dict(norm_layout="deepnorm"), True),
        (dict(norm_layout="sub_ln"), True),
        (dict(embed_norm="scaled"), True),
        (dict(embed_norm="layernorm"), True),
        (dict(qk_norm=True), True),
        (dict(qkv_init_scale=0.3), False),  # an init rule only
        (dict(reparam="sigma"), False),  # Ŵ = W₀ at init
    ],
    ids=lambda x: str(x),
)
def test_variant_forward_on_baseline_weights(kw, differs):
    base = model_of(seed=5)
    variant = model_of(seed=6, **kw)
    missing, unexpected = variant.load_state_dict(base.state_dict(), strict=False)
    assert all(k.startswith("transformer.ln_f") for k in unexpected)  # post-norm layouts have no ln_f
    assert all(("ln_" in k or "_norm" in k or ".sigma." in k) for k in missing)
    if "reparam" in kw:
        from steadylm.model.reparam import reset_sigma_

        reset_sigma_(variant)  # γ = σ of the loaded weights
    idx = tokens()
    with torch.no_grad():
        same = torch.allclose(variant(idx), base(idx), rtol=1e-4, atol=1e-5)
    assert same != differs


# ----------------------------------------------------------------------------- z-loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lm_loss_is_summed_ce_plus_z_loss_with_its_gradient(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 5, 11, generator=g)).to(dtype).requires_grad_()
    targets = torch.randint(0, 11, (2, 5), generator=g)
    z = 1e-2
    loss, log_z_sq = lm_loss(logits, targets, z_loss=z)
    assert loss.dtype == torch.float32 and not log_z_sq.requires_grad
    ref_logits = logits.detach().float().requires_grad_()
    ce = F.cross_entropy(ref_logits.view(-1, 11), targets.view(-1), reduction="sum")
    log_z = torch.logsumexp(ref_logits, -1)
    ref = ce + z * (log_z**2).sum()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(log_z_sq, (log_z**2).sum().detach())
    loss.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad.to(dtype).float())
    # and the closed form: softmax − onehot + 2·z·log Z·softmax
    p = ref_logits.detach().softmax(-1)
    closed = p - F.one_hot(targets, 11) + 2 * z * log_z.detach()[..., None] * p
    torch.testing.assert_close(ref_logits.grad, closed, rtol=1e-5, atol=1e-6)
    plain, _ = lm_loss(logits, targets)
    torch.testing.assert_close(plain, ce)
    torch.testing.assert_close(loss - plain, z * log_z_sq)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(mlra_rank=8), "model.mlra_rank=8 only applies to model.attention='mlra'"),
        (dict(mlra_mode="per_head"), "model.mlra_mode='per_head' only applies"),
        (dict(mlra_init="variance_preserving"), "model.mlra_init='variance_preserving' only applies"),
        (dict(mlra_out=True), "model.mlra_out=True only applies"),
        (dict(attention="mlra", qkv_init_scale=0.5),
         "model.qkv_init_scale=0.5 is the init control for model.attention='mha'"),
        (dict(attention="mlra", mlra_rank=65), "model.mlra_rank=65 exceeds n_embd=64"),
        (dict(attention="mlra", mlra_mode="per_head", mlra_rank=17), "model.mlra_rank=17 exceeds head_dim=16"),
    ],
)
def test_incompatible_combinations_are_rejected_in_one_line(kw, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
        cfg_of(**kw)
    assert "\n" not in str(e.value)


def test_every_layout_composes_with_every_attention_and_recipe():
    idx = tokens(B=1, T=8)
    for layout in ("pre_ln", "post_ln", "sub_ln", "deepnorm"):
        for extra in (dict(attention="mlra", embed_norm="scaled", qk_norm=True),
                      dict(reparam="sigma", embed_norm="layernorm", attention="mlra", mlra_mode="per_head")):
            out = model_of(n_layer=1, norm_layout=layout, **extra)(idx)
            assert out.shape == (1, 8, V) and torch.isfinite(out).all()
