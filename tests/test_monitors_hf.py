"""SteadyLMCallback in a real two-step Hugging Face Trainer run on a tiny random GPT-2."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from steadylm.monitor import tev_summary  # noqa: E402
from steadylm.monitor.integrations.hf import SteadyLMCallback  # noqa: E402

V, T = 64, 12


class Recorder(transformers.TrainerCallback):
    """Stands in for a reporter (TensorBoard, W&B) that the Trainer registered before user callbacks."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def brute_force_embed_grad_var(model, micro_batches) -> float:
    grads = []
    for ids in micro_batches:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(model.get_input_embeddings().weight.grad.flatten().clone())
    return torch.stack(grads).var(dim=0).mean().item()


def test_callback_logs_tev_and_gradient_statistics(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=V, n_positions=T, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, V, (8, T))
    expected_gv = brute_force_embed_grad_var(copy.deepcopy(model).train(), [ids[0:2], ids[2:4]])
    data = [{"input_ids": r, "labels": r} for r in ids]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=1e-2,
        train_sampling_strategy="sequential",
    )
    recorder = Recorder()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[recorder])
    SteadyLMCallback(gradvar_every=1, act_every=2).attach(trainer)
    trainer.train()

    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2]
    keys = {"tev_mean", "tev_std", "tev_seen_mean", "tev_seen_std", "grad_norm/embed", "grad_norm/h.1",
            "param_norm/h.0", "update_ratio/h.1", "grad_var_embed", "grad_var/h.0", "grad_var/h.1", "grad_var_seconds"}
    for h in logged:
        assert keys <= set(h), keys - set(h)
        assert all(isinstance(h[k], float) for k in keys)
    assert "rms/h.1" in logged[0] and "logz_mean" in logged[0] and "rms/h.1" not in logged[1]  # act_every=2
    # Step 1's micro-batches are rows 0-1 and 2-3 (sequential sampling). The Trainer divides each
    # micro-batch's summed loss by the step's label count taken before the causal shift (T per row,
    # of which T-1 are scored), hence the documented ((T-1)/T)^2 against the mean-loss definition.
    assert logged[0]["grad_var_embed"] == pytest.approx(expected_gv * ((T - 1) / T) ** 2, rel=1e-4)
    # The last log carries TEV of the weights after the last step.
    mu, sigma = tev_summary(model.get_input_embeddings().weight)
    assert logged[1]["tev_mean"] == pytest.approx(mu.item(), rel=1e-6)
    assert logged[1]["tev_std"] == pytest.approx(sigma.item(), rel=1e-5)
    assert logged[0]["tev_mean"] != logged[1]["tev_mean"]  # measured each step
    # Rows seen: only the tokens in the training batches (a strict subset of the 64 here).
    assert logged[0]["tev_seen_mean"] != logged[1]["tev_mean"]
    # attach() put the callback ahead of the reporters.
    assert [r for r in recorder.logs if "loss" in r][-1]["tev_mean"] == logged[1]["tev_mean"]


def test_callback_rejects_gradvar_without_accumulation(tmp_path):
    cfg = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=V, n_positions=T, bos_token_id=0,
                                  eos_token_id=0)
    ids = torch.randint(0, V, (4, T))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                                          report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(cfg), args=args,
                                   train_dataset=[{"input_ids": r, "labels": r} for r in ids])
    SteadyLMCallback(gradvar_every=1).attach(trainer)
    with pytest.raises(ValueError, match="gradient_accumulation_steps >= 2"):
        trainer.train()
