"""Reference language-model loss for tests: token cross-entropy plus PaLM's z-loss, as sums,
from materialised logits. The model computes the same sums chunk by chunk, without holding the
logits (`steadylm.model.lm_head_loss`); tests compare the two in value and gradient.
"""

from __future__ import annotations

import torch


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss of `logits` (B, T, V) against `targets` (B, T).

    Returns `(loss_sum, log_z_sq_sum)`:
    - `loss_sum` = Σ_tokens CE + z_loss · Σ_tokens log²Z, differentiable: backpropagate this
      (divided by the token count) and nothing else;
    - `log_z_sq_sum` = Σ_tokens log²Z, detached, for logging. Z = Σ_v exp(logit_v) is the softmax
      normaliser; z-loss (Chowdhery et al. 2022, PaLM) pulls log Z towards 0 so the output logits
      cannot drift to large magnitudes. The cross-entropy alone is `loss_sum − z_loss · log_z_sq_sum`
      (exactly `loss_sum` when z_loss is 0, the default).

    Computed in fp32 whatever the logits' dtype: under bf16 autocast the logits arrive in bf16, and
    a log-softmax over tens of thousands of classes loses several bits there.
    """
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)  # (B, T)
    # CE = log Z − logit[target]; written this way so log Z is computed once for both terms.
    ce = log_z - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    log_z_sq = log_z.square()
    loss = ce.sum()
    if z_loss:
        loss = loss + z_loss * log_z_sq.sum()
    return loss, log_z_sq.sum().detach()

