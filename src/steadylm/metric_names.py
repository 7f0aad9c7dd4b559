"""Names of the figures in RUN/metrics.jsonl, defined once for every writer and reader.

Scalars are flat keys; per-layer figures are `PREFIX/h.N` (see `per_layer`), the embedding's
`PREFIX/embed`. Events (spike, skip, rollback, non-finite) are lines with an `EVENT` field.
"""

from __future__ import annotations

STEP = "step"
TOKENS = "tokens"
LOSS = "loss"
LR = "lr"
GRAD_NORM = "grad_norm"  # before clipping
TOKENS_PER_S = "tokens_per_s"
VAL_LOSS = "val_loss"
VAL_PPL = "val_ppl"
Z_LOSS = "z_loss"  # the term added to the loss (coefficient x mean log²Z)
LINEARITY_REG = "linearity_reg"  # the term added to the loss (λ x mean penalty)
SKIPPED = "skipped"  # the optimizer step was skipped (non-finite values, or a spike under "skip")

# Event lines: {"event": KIND, "step": ...}
EVENT = "event"
EVENT_NON_FINITE = "non_finite"
EVENT_SPIKE = "spike"
EVENT_ROLLBACK = "rollback"
EVENT_TEV_HISTOGRAM = "tev_histogram"

# Token Embedding Variability: all real rows, the rows seen in the input so far, an untied head.
TEV_MEAN = "tev_mean"
TEV_STD = "tev_std"
TEV_SEEN_MEAN = "tev_seen_mean"
TEV_SEEN_STD = "tev_seen_std"
TEV_HEAD_MEAN = "tev_head_mean"
TEV_HEAD_STD = "tev_head_std"

# The gradient-variance reference: the embedding's figure, its cost and the micro-batches used.
GRAD_VAR_EMBED = "grad_var_embed"
GRAD_VAR_SECONDS = "grad_var_seconds"
GRAD_VAR_K = "grad_var_k"

# Prefixes of per-layer figures.
GRAD_VAR = "grad_var"
RMS = "rms"
ATTN_LOGIT_MAX = "attn_logit_max"  # also a scalar: the maximum over blocks
PARAM_NORM = "param_norm"
UPDATE_RATIO = "update_ratio"


def per_layer(prefix: str, group: str) -> str:
    """`per_layer(RMS, "h.3")` -> `rms/h.3`."""
    return f"{prefix}/{group}"
