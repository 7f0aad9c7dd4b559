"""steadylm: stable language-model pre-training, measured."""

__version__ = "0.1.0"

# Heavy imports (torch) happen on first use, so `steadylm --help` stays fast.
_LAZY = {
    "load_model": "steadylm.model.hf",
    "GPT": "steadylm.model.gpt",
    "load_config": "steadylm.config",
    "Config": "steadylm.config",
    "TEVMonitor": "steadylm.monitor.tev",
    "GradVarianceMonitor": "steadylm.monitor.gradvar",
    "ParamStatsMonitor": "steadylm.monitor.params",
    "ActivationMonitor": "steadylm.monitor.activations",
    "SpikeDetector": "steadylm.monitor.spikes",
    "first_nonfinite_grad": "steadylm.monitor.nonfinite",
    "load_classifier": "steadylm.finetune.export",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steadylm' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
