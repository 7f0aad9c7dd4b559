"""Tiny bases and a synthetic keyword task for the fine-tuning tests (all built here, no downloads)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

WORDS = [f"w{i}" for i in range(40)]
KEYWORDS = ("good", "bad")  # the label is which keyword the text contains


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class Task:
    """Shaped like steadylm.tasks.Task, so the job can be tested without the task loaders."""

    name: str
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]


def keyword_examples(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        words = rng.choices(WORDS, k=rng.randint(3, 8))
        words.insert(rng.randrange(len(words) + 1), KEYWORDS[label])
        out.append(Example(" ".join(words), label))
    return out


def keyword_task(n_train: int = 160, n_test: int = 64) -> Task:
    return Task(
        "keywords",
        ("pos", "neg"),
        tuple(keyword_examples(n_train, 1)),
        tuple(keyword_examples(32, 2)),
        tuple(keyword_examples(n_test, 3)),
    )


def write_jsonl(task: Task, path: Path) -> Path:
    """The task's examples as a .jsonl file with text and label (the format `steadylm.tasks` reads)."""
    rows = [*task.train, *task.validation, *task.test]
    path.write_text(
        "".join(json.dumps({"text": e.text, "label": task.labels[e.label]}) + "\n" for e in rows)
    )
    return path


def word_tokenizer(cls_sep: bool = True):
    import tokenizers
    from tokenizers import models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *KEYWORDS, *WORDS])}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if cls_sep:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
    return tok


def tiny_bert(folder: Path) -> Path:
    """A random-init 2-layer BERT (hidden 32, MLP 64) saved as a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(WORDS) + 6,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    BertModel(cfg).save_pretrained(folder)
    word_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


def tiny_gpt(folder: Path) -> Path:
    """A random-init 2-layer steadylm GPT checkpoint folder (config.toml, model.safetensors, tokenizer.json)."""
    import torch
    from safetensors.torch import save_file

    from steadylm.config import Config
    from steadylm.model.gpt import GPT

    torch.manual_seed(0)
    cfg = Config()
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head = 2, 32, 4
    cfg.model.vocab_size, cfg.model.block_size = len(WORDS) + 6, 32
    gpt = GPT(cfg.validate().model)
    folder.mkdir(parents=True)
    sd = {k: v.contiguous() for k, v in gpt.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.toml").write_text(cfg.to_toml())
    word_tokenizer(cls_sep=False).save(str(folder / "tokenizer.json"))
    return folder
