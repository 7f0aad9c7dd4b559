"""`steadylm finetune`: classification fine-tuning with full fine-tuning, LoRA or SparseGrad.

config.py (the [finetune] section), models.py (bases as classifiers), sparsegrad.py (the layer
and its basis), methods.py (the three methods), job.py (the run folder and loop), export.py
(the fine-tuned classifier and `load_classifier`).
"""
