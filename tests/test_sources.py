"""Every source kind, and a clear error for every kind of bad input."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemaflow import storage
from hemaflow.config import load_config
from hemaflow.data import sources
from hemaflow.data.sources import SourceError, read_folder, read_npz, read_source


def small_config(**overrides):
    return load_config("quickstart", overrides={"data.image_size": 32, **overrides})


@pytest.fixture
def mixed_folder(pbc_sample, tmp_path) -> Path:
    """Two classes of real JPEGs plus a PNG, a TIFF, odd-case extensions and non-image files."""
    root = tmp_path / "cells"
    for name in ("lymphocyte", "platelet"):
        (root / name).mkdir(parents=True)
        for f in sorted((pbc_sample / name).iterdir())[:4]:
            shutil.copy2(f, root / name / f.name)
    lymph = sorted((root / "lymphocyte").iterdir())
    with Image.open(lymph[0]) as im:
        im.save(root / "lymphocyte" / "as_png.PNG")
        im.save(root / "lymphocyte" / "as_tiff.TiFf")
    lymph[1].rename(lymph[1].with_suffix(".JPG"))
    lymph[2].rename(lymph[2].with_suffix(".Jpeg"))
    (root / "README.md").write_text("about these cells")
    (root / "LICENSE").write_text("CC BY 4.0")
    (root / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "platelet" / "notes.txt").write_text("counted twice")
    (root / "platelet" / ".DS_Store").write_bytes(b"\0")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._x.jpg").write_bytes(b"\0")
    return root


def test_folder_reads_jpeg_png_tiff_in_any_case_and_skips_non_images(mixed_folder):
    loaded = read_folder(mixed_folder, 32)
    assert loaded.class_names == ["lymphocyte", "platelet"]
    assert loaded.images.shape == (10, 32, 32, 3) and loaded.images.dtype == np.uint8
    assert np.bincount(loaded.labels).tolist() == [6, 4]
    ids = list(loaded.ids)
    assert {"lymphocyte/as_png.PNG", "lymphocyte/as_tiff.TiFf"} <= set(ids)
    assert any(i.endswith(".JPG") for i in ids) and any(i.endswith(".Jpeg") for i in ids)
    skipped = {Path(s["path"]).name for s in loaded.skipped}
    assert skipped == {"README.md", "LICENSE", ".DS_Store", "notes.txt", "__MACOSX"}
    # lossless copies of one JPEG decode to the same pixels
    png, tiff = ids.index("lymphocyte/as_png.PNG"), ids.index("lymphocyte/as_tiff.TiFf")
    np.testing.assert_array_equal(loaded.images[png], loaded.images[tiff])
    assert loaded.original_sizes == {"128x128": 10}


def test_decode_converts_to_rgb_and_centre_crops(tmp_path):
    grey = np.tile(np.arange(80, dtype=np.uint8), (60, 1))  # 60 x 80, a horizontal ramp
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    Image.new("RGBA", (50, 50), (10, 200, 30, 128)).save(tmp_path / "a.png")
    image, original = sources.decode_image(tmp_path / "g.png", 20)
    assert image.shape == (20, 20, 3) and original == (60, 80)
    assert 30 < image[..., 0].mean() < 50  # the centre 60 columns of the ramp: mean about 40
    rgba, _ = sources.decode_image(tmp_path / "a.png", 20)
    assert rgba.shape == (20, 20, 3) and tuple(rgba[10, 10]) == (10, 200, 30)


def test_sixteen_bit_tiff_is_scaled_to_eight_bits(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16) * 1024).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "deep.tif")  # uint16 2-D: mode I;16
    image, _ = sources.decode_image(tmp_path / "deep.tif", 8)
    assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
    assert image[0, 0, 0] == 0 and 245 <= image[7, 7, 0] <= 255


def test_truncated_and_garbage_images_name_the_file_or_are_skipped(mixed_folder):
    victim = sorted((mixed_folder / "platelet").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:600])
    (mixed_folder / "platelet" / "fake.jpg").write_text("not a picture")
    with pytest.raises(SourceError, match=victim.name) as err:
        read_folder(mixed_folder, 32)
    assert "unreadable image" in str(err.value)
    loaded = read_folder(mixed_folder, 32, on_bad_image="skip")
    assert {Path(b["path"]).name for b in loaded.bad_images} == {victim.name, "fake.jpg"}
    assert len(loaded.labels) == 9


def test_empty_class_folder_is_an_error_naming_it(mixed_folder):
    (mixed_folder / "basophil").mkdir()
    (mixed_folder / "basophil" / "README").write_text("nothing yet")
    with pytest.raises(SourceError, match="basophil.*holds no images"):
        read_folder(mixed_folder, 32)


def test_missing_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(OSError, match="nowhere"):
        read_source(str(tmp_path / "nowhere"), small_config())


def test_unsupported_file_kind_is_an_error(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(SourceError, match="data.zip"):
        read_source(str(tmp_path / "data.zip"), small_config())


# --------------------------------------------------------------------------- npz


def _images(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_challenge_npz_with_column_labels_and_class_names(tmp_path):
    path = tmp_path / "challenge.npz"
    np.savez(
        path,
        images=_images(6),
        labels=np.array([[0], [1], [2], [0], [1], [2]]),
        class_names=np.array(["a", "b", "c"]),
    )
    loaded = read_npz(path, 32)
    assert loaded.images.shape == (6, 32, 32, 3) and loaded.class_names == ["a", "b", "c"]
    assert loaded.labels.tolist() == [0, 1, 2, 0, 1, 2] and loaded.given_splits is None
    assert loaded.description["layout"] == "challenge"


def test_medmnist_npz_keeps_given_split_membership(tmp_path):
    path = tmp_path / "medmnist.npz"
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = _images(n, 32, seed=n)
        arrays[f"{split}_labels"] = np.arange(n).reshape(n, 1) % 8
    np.savez(path, **arrays)
    loaded = read_npz(path, 32)
    assert len(loaded.labels) == 10 and loaded.class_names[0] == "basophil"
    assert loaded.given_splits.tolist() == ["train"] * 5 + ["val"] * 2 + ["test"] * 3
    assert loaded.ids[5] == "val/000000"
    np.testing.assert_array_equal(loaded.images[7:], arrays["test_images"])  # same size: untouched


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pictures": _images(2), "tags": np.zeros(2, int)}, "unknown .npz layout"),
        ({"pictures": _images(2), "labels": np.zeros(2, int)}, "missing key .images."),
        ({"images": _images(2)}, "missing key 'labels'"),
        (
            {"images": _images(2)[..., 0], "labels": np.zeros(2, int)},
            "key 'images': expected shape",
        ),
        ({"images": _images(2).astype(np.float32), "labels": np.zeros(2, int)}, "dtype uint8"),
        ({"images": _images(2), "labels": np.array([0, 8])}, "label 8 at index 1 is out of range"),
        ({"images": _images(2), "labels": np.array([0, -1])}, "out of range"),
        ({"images": _images(2), "labels": np.zeros(3, int)}, "3 labels for 2 images"),
        ({"images": _images(2), "labels": np.zeros(2)}, "integer labels"),
        (
            {"train_images": _images(2), "val_labels": np.zeros(2, int)},
            "missing key 'train_labels'",
        ),
    ],
)
def test_bad_npz_names_the_file_and_key(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(SourceError, match=message) as err:
        read_npz(path, 32)
    assert str(path) in str(err.value)


def test_pickled_content_is_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, images=_images(2), labels=np.array([{"label": 0}, {"label": 1}], dtype=object))
    with pytest.raises(SourceError, match="key 'labels'.*pickle"):
        read_npz(path, 32)
    npy = tmp_path / "pickled_array.npz"
    np.save(npy.with_suffix(".npy"), np.array([{"x": 1}], dtype=object), allow_pickle=True)
    npy.with_suffix(".npy").rename(npy)
    with pytest.raises(SourceError, match="pickled_array.npz"):
        read_npz(npy, 32)


def test_not_an_npz_is_an_error(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(SourceError, match="broken.npz"):
        read_npz(path, 32)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_or_corrupt_npz_names_the_file(tmp_path, compress):
    path = tmp_path / "cells.npz"
    (np.savez_compressed if compress else np.savez)(
        path, images=_images(8), labels=np.arange(8) % 2
    )
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SourceError, match=r"cells.npz: not a readable .npz file"):
        read_npz(path, 32)
    flipped = bytearray(whole)
    flipped[200:300] = bytes(b ^ 0xFF for b in flipped[200:300])
    path.write_bytes(bytes(flipped))
    with pytest.raises(SourceError, match=r"cells.npz: key 'images': unreadable"):
        read_npz(path, 32)


def test_one_class_is_an_error_naming_it_where_training_needs_two(mixed_folder, tmp_path):
    shutil.rmtree(mixed_folder / "platelet")
    with pytest.raises(SourceError, match=r"only 1 class found \('lymphocyte'\).*at least 2"):
        read_source(str(mixed_folder), small_config(), min_classes=2)
    assert read_source(str(mixed_folder), small_config()).class_names == ["lymphocyte"]
    npz = tmp_path / "one.npz"
    np.savez(npz, images=_images(4), labels=np.full(4, 3))
    with pytest.raises(SourceError, match=r"one.npz: only 1 class found \('ig'\)"):
        read_source(str(npz), small_config(), min_classes=2)


def test_special_files_are_skipped_not_read(mixed_folder):
    """A FIFO named like an image would block the reader forever."""
    fifo = mixed_folder / "platelet" / "pipe.jpg"
    os.mkfifo(fifo)
    loaded = read_folder(mixed_folder, 32)
    assert {"path": str(fifo), "reason": "not a regular file"} in loaded.skipped


# --------------------------------------------------------------------------- bloodmnist


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server standing in for Zenodo, serving a BloodMNIST-shaped file."""
    served = tmp_path / "served"
    served.mkdir()
    arrays = {}
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = _images(n, 64, seed=n)
        arrays[f"{split}_labels"] = (np.arange(n) % 8).reshape(n, 1).astype(np.uint8)
    np.savez(served / "bloodmnist_64.npz", **arrays)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(sources.BLOODMNIST_URL_ENV, f"http://127.0.0.1:{server.server_port}/")
    yield served / "bloodmnist_64.npz", server
    server.shutdown()
    server.server_close()


def test_bloodmnist_downloads_verifies_and_caches(mirror, monkeypatch):
    file, server = mirror
    digest = hashlib.md5(file.read_bytes()).hexdigest()
    monkeypatch.setitem(sources.BLOODMNIST_MD5, 64, digest)
    config = small_config()
    loaded = read_source("bloodmnist:64", config)
    assert loaded.description["kind"] == "bloodmnist" and loaded.description["resolution"] == 64
    assert loaded.images.shape == (16, 32, 32, 3)
    cached = storage.cache_root() / "bloodmnist" / "bloodmnist_64.npz"
    assert sources.md5_file(cached) == digest
    assert not list(cached.parent.glob("*.part"))
    server.shutdown()  # offline now: the verified cache is used
    again = read_source("bloodmnist:64", config)
    np.testing.assert_array_equal(again.images, loaded.images)


def test_bloodmnist_cache_dir_from_config(mirror, monkeypatch, tmp_path):
    file, _ = mirror
    monkeypatch.setitem(sources.BLOODMNIST_MD5, 64, hashlib.md5(file.read_bytes()).hexdigest())
    read_source("bloodmnist:64", small_config(**{"data.cache_dir": str(tmp_path / "mine")}))
    assert (tmp_path / "mine" / "bloodmnist" / "bloodmnist_64.npz").is_file()


def test_bloodmnist_checksum_mismatch_is_an_error_and_caches_nothing(mirror):
    with pytest.raises(SourceError, match="checksum mismatch"):
        read_source("bloodmnist:64", small_config())
    folder = storage.cache_root() / "bloodmnist"
    assert list(folder.iterdir()) == []


def test_bloodmnist_unknown_size_and_unreachable_server(monkeypatch):
    with pytest.raises(SourceError, match="sizes 28, 64, 128, 224"):
        read_source("bloodmnist:65", small_config())
    monkeypatch.setenv(sources.BLOODMNIST_URL_ENV, "http://127.0.0.1:9/")
    with pytest.raises(SourceError, match="download failed"):
        read_source("bloodmnist:28", small_config())


def test_bloodmnist_default_url_is_the_zenodo_record(monkeypatch):
    monkeypatch.delenv(sources.BLOODMNIST_URL_ENV, raising=False)
    assert sources.bloodmnist_url(64) == (
        "https://zenodo.org/records/10519652/files/bloodmnist_64.npz?download=1"
    )
    assert sources.bloodmnist_url(28).endswith("/bloodmnist.npz?download=1")


# --------------------------------------------------------------------------- default, gs://


def test_default_source_is_synthetic():
    loaded = read_source("default", small_config(**{"data.synthetic_per_class": 5}))
    assert loaded.synthetic and loaded.description["kind"] == "synthetic"
    assert loaded.images.shape == (40, 32, 32, 3) and len(set(loaded.ids)) == 40


def test_gs_sources_go_through_storage_local_path(mixed_folder, monkeypatch):
    seen = []

    def fake_local_path(uri):
        seen.append(uri)
        return mixed_folder

    monkeypatch.setattr(storage, "local_path", fake_local_path)
    loaded = read_source("gs://bucket/cells", small_config())
    assert seen == ["gs://bucket/cells"] and loaded.description["uri"] == "gs://bucket/cells"
    assert len(loaded.labels) == 10
