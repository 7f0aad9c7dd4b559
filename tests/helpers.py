"""Small generated corpora and configs for tests; no third-party text."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from pathlib import Path

from steadylm.config import load_config, toml_value

_WORDS = [
    "the", "a", "stable", "model", "learns", "tokens", "from", "text", "while", "gradients", "flow",
    "through", "deep", "layers", "and", "embeddings", "drift", "slowly", "under", "noise", "so",
    "we", "measure", "variance", "at", "every", "step", "of", "training",
]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), found before any is killed: a rank whose parent
    dies is re-parented to init and could no longer be traced back."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def run_tree(cmd: list[str], *, timeout: float, **kw) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True, timeout=...)` for commands that start
    processes of their own (torchrun and its ranks, a sweep and its runs): on timeout every
    process below the command is killed with it, including those in sessions of their own
    (torchrun starts each rank so), so a hung test leaves no orphans loading the machine.
    Raises TimeoutExpired as run does."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()  # not communicate: the pipes are closed once every holder is dead
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def write_corpus(folder: Path, n_docs: int = 12, words_per_doc: int = 400, seed: int = 0) -> Path:
    """A folder of .txt documents built from a small vocabulary, with some repeated structure."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        lines = []
        for _ in range(words_per_doc // 10):
            start = rng.randrange(len(_WORDS))
            lines.append(" ".join(_WORDS[(start + k) % len(_WORDS)] if rng.random() < 0.8 else rng.choice(_WORDS)
                                  for k in range(10)))
        (folder / f"doc{d:03d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def tiny_overrides(corpus: Path, **extra) -> list[str]:
    base = {
        "model.n_layer": 2, "model.n_embd": 32, "model.n_head": 4, "model.block_size": 16,
        "data.path": str(corpus), "data.tokenizer": "bpe:300", "data.val_fraction": 0.2,
        "train.max_steps": 8, "train.batch_size": 8, "train.micro_batch_size": 4, "train.lr": 3e-3,
        "train.min_lr": 3e-4, "train.warmup_steps": 2, "train.eval_every": 4, "train.eval_batches": 2,
        "train.checkpoint_every": 4, "train.log_every": 2,
        # Explicit: "auto" means bf16 on hardware with native bf16, and exact-resume and
        # equality tests need fp32 and eager steps wherever the suite runs.
        "train.precision": "fp32", "train.compile": False,
    }
    base.update(extra)
    return [f"{k}={toml_value(v)}" for k, v in base.items()]


def tiny_config(corpus: Path, **extra):
    return load_config(None, tiny_overrides(corpus, **extra))
