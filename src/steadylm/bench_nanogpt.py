"""A nanoGPT-equivalent training loop in plain PyTorch, the yardstick of `steadylm bench --compare
nanogpt`.

Written for this comparison after nanoGPT's published design (Karpathy's model.py and train.py),
so that the comparison runs on any machine without that repository: the same GPT-2 block
(pre-LayerNorm with biases, fused q/k/v projection, `scaled_dot_product_attention` with a causal
mask, a 4x MLP with exact GELU, tied embedding and head, init N(0, 0.02²) with the residual
projections scaled by 1/sqrt(2·n_layer)); full logits and `F.cross_entropy`; AdamW with decay on
matrices only, fused on CUDA only (nanoGPT's choice; the default implementation elsewhere);
gradient clipping at 1.0; `zero_grad(set_to_none=True)`; a random batch per step. fp32 by
default, as nanoGPT trains on a CPU (its train.py autocasts only on CUDA); `bf16=True` runs the
forward pass under bf16 autocast, as it does on a GPU. No monitors, no host sync inside the step.
Only its speed is used: it never trains on real text.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.attn_proj = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> 3 x (B, nh, T, hs)
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            for t in self.c_attn(x).split(C, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class PlainGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # the residual projections: GPT-2's scaled init
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def plain_optimizer(model: nn.Module, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=device.type == "cuda")


def plain_step(
    shape: dict[str, int], batch_size: int, compile: bool = False, bf16: bool = False
) -> Callable[[], torch.Tensor]:
    """One optimizer step of the plain loop at `shape` (vocab_size, block_size, n_layer, n_head,
    n_embd) on the default device, as a function returning the step's loss (on the device);
    `bf16`: the forward pass under bf16 autocast, the weights and optimizer in fp32."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = PlainGPT(**shape).to(device)
    optimizer = plain_optimizer(model, device)
    forward = torch.compile(model) if compile else model
    V, T = shape["vocab_size"], shape["block_size"]

    def step() -> torch.Tensor:
        x = torch.randint(0, V, (batch_size, T), device=device)
        y = torch.randint(0, V, (batch_size, T), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step
