"""A tiny BERT classifier trained here on a keyword task, for the attack tests (no downloads).

Texts are random filler words with one keyword: "good" -> pos, "bad" -> neg. A trigger holding
the opposing keyword should flip the classifier; "the the the" (filler) should not."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

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


def train_classifier(folder: Path, seed: int = 0, steps: int = 150) -> Path:
    """Train a tiny BERT on the keyword task and save it as a Hugging Face classifier folder."""
    from steadylm.finetune.models import pad

    torch.manual_seed(seed)
    model = tiny_bert(seed)
    tok = tokenizer()
    data = texts_and_labels(512, seed + 100)
    ids_all = [e.ids for e in tok.encode_batch([t for t, _ in data])]
    y_all = torch.tensor([y for _, y in data])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(len(data), (32,), generator=g).tolist()
        ids, mask = pad([ids_all[i] for i in index], 0)
        loss = model(input_ids=ids, attention_mask=mask, labels=y_all[index]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def write_task(path: Path, n: int = 600) -> Path:
    rows = texts_and_labels(n, 7)
    path.write_text("".join(json.dumps({"text": t, "label": LABELS[y]}) + "\n" for t, y in rows))
    return path
