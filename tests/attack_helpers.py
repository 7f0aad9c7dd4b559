"""Tiny victims for the attack tests, built here (no downloads): an untrained BERT classifier and
a steadylm GPT fine-tuned by `steadylm finetune` on a keyword task.

Texts are random filler words with one keyword: "good" -> pos, "bad" -> neg. A trigger holding
the opposing keyword should flip the classifier; "the the the" (filler) should not."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from finetune_helpers import Example, Task  # shaped like steadylm.tasks

LETTERS = "abcdefghijklmnopqrstuvwxyz"
FILLER = sorted({"".join(random.Random(i).choices(LETTERS, k=5)) for i in range(40)}) + ["the"]
KEYWORDS = ("bad", "good")  # label ids 0 (neg) and 1 (pos), as the task file's sorted names
LABELS = ("neg", "pos")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def texts_and_labels(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        words = rng.choices(FILLER, k=rng.randint(4, 8))
        words.insert(rng.randrange(len(words) + 1), KEYWORDS[label])
        out.append((" ".join(words), label))
    return out


def tokenizer():
    import tokenizers
    from tokenizers import models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate([*SPECIALS, *KEYWORDS, *FILLER])}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.add_special_tokens(SPECIALS)
    return tok


def tiny_llama(seed: int = 0):
    """A random-init 2-layer Llama sequence classifier (hidden 32, grouped-query attention)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(SPECIALS) + len(KEYWORDS) + len(FILLER),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    return LlamaForSequenceClassification(cfg)


def tiny_bert(seed: int = 0, layers: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(SPECIALS) + len(KEYWORDS) + len(FILLER),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg)


def write_task(path: Path, n: int = 600, seed: int = 7) -> Path:
    rows = texts_and_labels(n, seed)
    path.write_text("".join(json.dumps({"text": t, "label": LABELS[y]}) + "\n" for t, y in rows))
    return path


def finetuned_gpt(root: Path, seed: int = 0, steps: int = 120) -> Path:
    """A tiny steadylm GPT (2 blocks, d = 32, no special tokens) fine-tuned by `steadylm finetune`
    on the keyword task, mean pooling; returns the run folder."""
    from safetensors.torch import save_file

    from steadylm.config import Config
    from steadylm.finetune.config import load_finetune_config
    from steadylm.finetune.job import FinetuneJob
    from steadylm.model.gpt import GPT

    torch.manual_seed(seed)
    cfg = Config()
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head = 2, 32, 4
    cfg.model.vocab_size, cfg.model.block_size = len(SPECIALS) + len(KEYWORDS) + len(FILLER), 32
    base = root / "gpt-base"
    base.mkdir(parents=True)
    gpt = GPT(cfg.validate().model)
    sd = {k: v.contiguous() for k, v in gpt.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(base / "model.safetensors"))
    (base / "config.toml").write_text(cfg.to_toml())
    tok = tokenizer()
    tok.post_processor = None  # our GPT's texts carry no special tokens
    tok.save(str(base / "tokenizer.json"))

    def split(n: int, s: int) -> tuple:
        return tuple(Example(t, y) for t, y in texts_and_labels(n, s))

    task = Task("keywords", LABELS, split(512, seed + 100), split(32, 2), split(64, 3))
    ft = load_finetune_config(None, [
        f"finetune.base={json.dumps(str(base))}", 'finetune.method="full"', 'finetune.pooling="mean"',
        f"finetune.max_steps={steps}", "finetune.lr=3e-3", "finetune.batch_size=32",
        "finetune.eval_every=0", "finetune.checkpoint_every=0", f"finetune.seed={seed}",
        'finetune.device="cpu"',
    ])  # fmt: skip
    run = root / "gpt-run"
    FinetuneJob(ft, run, task=task, progress=False).run()
    return run
