import os
import stat

import pytest

from hemaflow import storage


def test_artifact_dir_publishes_only_on_success(tmp_path):
    final = tmp_path / "out"
    with storage.artifact_dir(final) as staging:
        (staging / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    assert storage.is_complete(final)

    with pytest.raises(RuntimeError), storage.artifact_dir(final) as staging:
        (staging / "a.txt").write_text("two")
        raise RuntimeError("stage failed")
    assert (final / "a.txt").read_text() == "one", "a failed stage must keep the old artifact"
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging folder is left behind"


def test_artifact_dir_replaces_a_previous_artifact_whole(tmp_path):
    final = tmp_path / "out"
    with storage.artifact_dir(final) as staging:
        (staging / "old.txt").write_text("old")
    with storage.artifact_dir(final) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == [storage.COMPLETE_MARKER, "new.txt"]


def test_artifact_dir_refuses_to_replace_a_foreign_folder(tmp_path):
    final = tmp_path / "mine"
    final.mkdir()
    (final / "thesis.tex").write_text("precious")
    with (
        pytest.raises(storage.StorageError, match="not a hemaflow artifact"),
        storage.artifact_dir(final) as staging,
    ):
        (staging / "x").write_text("x")
    assert (final / "thesis.tex").read_text() == "precious"


def test_published_files_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        with storage.artifact_dir(tmp_path / "out") as staging:
            storage.write_text_atomic(staging / "m.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "m.json").stat().st_mode) == 0o644


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(storage.StorageError, match="no such file or folder"):
        storage.local_path(tmp_path / "nope")


def test_join_and_split_gcs():
    assert storage.join("gs://b/x", "y", "z.txt") == "gs://b/x/y/z.txt"
    assert storage.split_gcs("gs://bucket/a/b") == ("bucket", "a/b")
    with pytest.raises(storage.StorageError, match="needs a bucket"):
        storage.split_gcs("gs:///a")
