"""Stability monitors: small objects with state that a training loop calls and checkpoints.

They work on steadylm's GPT and on any `nn.Module` with input embeddings (Hugging Face models
included), compute on the device and never sync the host unless asked for values. See
docs/monitoring.md for how a loop calls each one.
"""

from steadylm.monitor.activations import ActivationMonitor
from steadylm.monitor.gradvar import GradVarianceMonitor
from steadylm.monitor.nonfinite import first_nonfinite_grad
from steadylm.monitor.params import ParamStatsMonitor
from steadylm.monitor.spikes import SpikeDetector
from steadylm.monitor.tev import TEVMonitor, tev_histogram, tev_per_row, tev_summary

__all__ = [
    "ActivationMonitor",
    "GradVarianceMonitor",
    "ParamStatsMonitor",
    "SpikeDetector",
    "TEVMonitor",
    "first_nonfinite_grad",
    "tev_histogram",
    "tev_per_row",
    "tev_summary",
]
