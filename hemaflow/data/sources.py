"""Read a data source into uint8 images at the working size, with labels, ids and class names.

Sources (see :func:`read_source`):

- a folder of class sub-folders holding JPEG/PNG/TIFF files (extensions in any case);
  files that are not images (README, LICENSE, .DS_Store ...) are skipped and listed;
- an ``.npz`` in the challenge layout (``images`` N x H x W x 3 uint8, ``labels`` N or N x 1,
  optional ``class_names``) or in the MedMNIST layout (``train_images``, ``train_labels``,
  ``val_*``, ``test_*``). The MedMNIST split membership is kept as information
  (``LoadedSource.given_splits``) but not used: ingest makes its own stratified split so that
  duplicate groups never straddle two splits and every source is split the same way;
- ``bloodmnist:SIZE`` (28, 64, 128, 224): the MedMNIST+ file from its Zenodo record,
  downloaded over HTTPS into the cache, MD5-verified before it is used;
- ``default``: the embedded synthetic source (:mod:`hemaflow.data.synthetic`);
- any file or folder above under ``gs://`` (fetched through :func:`storage.local_path`).

Archives (.zip/.tar) are not supported as sources, so nothing is ever extracted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hemaflow import storage
from hemaflow.config import CLASS_NAMES, Config
from hemaflow.errors import HemaflowError
from hemaflow.progress import progress

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
SPLIT_NAMES = ("train", "val", "test")
METADATA_FOLDERS = frozenset({"__MACOSX", "__pycache__"})  # never classes

BLOODMNIST_URL_ENV = "HEMAFLOW_BLOODMNIST_URL"
BLOODMNIST_BASE_URL = "https://zenodo.org/records/10519652/files"
# MD5 checksums of the MedMNIST+ v3 files, as published in the medmnist package's INFO dict.
BLOODMNIST_MD5: dict[int, str] = {
    28: "7053d0359d879ad8a5505303e11de1dc",
    64: "2b94928a2ae4916078ca51e05b6b800b",
    128: "adace1e0ed228fccda1f39692059dd4c",
    224: "b718ff6835fcbdb22ba9eacccd7b2601",
}


log = logging.getLogger(__name__)

# What numpy raises on a truncated or corrupt .npz (a zip archive), when opened or read.
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class SourceError(HemaflowError, ValueError):
    """A source is missing, malformed or holds data that cannot be used."""


@dataclass
class LoadedSource:
    """Everything ingest needs from a source; images are N x S x S x 3 uint8 at the working size."""

    images: np.ndarray
    labels: np.ndarray  # N int64 in [0, len(class_names))
    ids: np.ndarray  # N str, unique
    class_names: list[str]
    description: dict[str, Any]
    synthetic: bool = False
    original_sizes: dict[str, int] = field(default_factory=dict)  # "HxW" -> count
    skipped: list[dict[str, str]] = field(default_factory=list)  # non-image files
    bad_images: list[dict[str, str]] = field(default_factory=list)  # skipped bad images
    given_splits: np.ndarray | None = None  # MedMNIST split membership, N str


# --------------------------------------------------------------------------- entry point


def read_source(source: str, config: Config, min_classes: int = 1) -> LoadedSource:
    """Read ``source`` at ``config.data.image_size``; raises :class:`SourceError` on bad input.

    ``min_classes`` is how many classes must have images: training needs 2, scoring a model
    on one class is fine. A folder is counted before any image is decoded.
    """
    size = config.data.image_size
    text = source.strip()
    if text == "default":
        from hemaflow.data import synthetic

        images, labels = synthetic.generate(config.data.synthetic_per_class, size, config.seed)
        ids = np.array([f"synthetic/{CLASS_NAMES[y]}/{i:05d}" for i, y in enumerate(labels)])
        return LoadedSource(
            images=images,
            labels=labels,
            ids=ids,
            class_names=list(CLASS_NAMES),
            description={
                "kind": "synthetic",
                "uri": "default",
                "per_class": config.data.synthetic_per_class,
                "seed": config.seed,
            },
            synthetic=True,
            original_sizes={f"{size}x{size}": len(labels)},
        )
    if text.lower().startswith("bloodmnist:"):
        resolution = _bloodmnist_size(text)
        path = fetch_bloodmnist(resolution, config.data.cache_dir)
        loaded = read_npz(path, size)
        loaded.description.update({"kind": "bloodmnist", "uri": text, "resolution": resolution})
        return loaded
    path = storage.local_path(text)
    if path.is_dir():
        loaded = read_folder(path, size, config.data.on_bad_image, min_classes)
    elif path.suffix.lower() == ".npz":
        loaded = read_npz(path, size)
        _check_classes(text, sorted({loaded.class_names[i] for i in loaded.labels}), min_classes)
    else:
        raise SourceError(
            f"{text}: not a source hemaflow reads (expected a folder of class folders, an .npz, "
            "'bloodmnist:SIZE' or 'default')"
        )
    loaded.description["uri"] = text
    return loaded


# --------------------------------------------------------------------------- images


def to_working_size(image: Any, size: int) -> np.ndarray:
    """RGB, centre-cropped to a square, resized (antialiased Lanczos) to ``size``, as uint8.

    Cropping keeps the cell's aspect ratio (the PBC originals are 360 x 363).
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit microscopy TIFFs
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode != "RGB":
        image = (
            image.convert("RGBA").convert("RGB")
            if "A" in image.getbands()
            else image.convert("RGB")
        )
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def decode_image(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one image file fully; any decoding problem raises :class:`SourceError` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # forces a full decode: a truncated file fails here
            original = (image.height, image.width)
            return to_working_size(image, size), original
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as exc:
        raise SourceError(f"{path}: unreadable image ({exc})") from exc


def _try_decode(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]] | SourceError:
    try:
        return decode_image(path, size)
    except SourceError as exc:
        return exc


# --------------------------------------------------------------------------- folder


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[dict[str, str]]]:
    """Class names, (file, label) pairs and the skipped non-image entries of a class-folder tree."""
    skipped: list[dict[str, str]] = []
    class_dirs = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            skipped.append({"path": str(entry), "reason": "hidden entry"})
        elif entry.name in METADATA_FOLDERS:
            skipped.append({"path": str(entry), "reason": "archive metadata folder"})
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            skipped.append({"path": str(entry), "reason": "not a class folder"})
    if not class_dirs:
        raise SourceError(f"{root}: no class sub-folders found")
    files: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        found = 0
        for path in sorted(class_dir.rglob("*")):
            if path.is_dir():
                continue
            relative = path.relative_to(class_dir)
            if any(part.startswith(".") for part in relative.parts):
                skipped.append({"path": str(path), "reason": "hidden file"})
            elif path.exists() and not path.is_file():  # a FIFO would block the reader
                skipped.append({"path": str(path), "reason": "not a regular file"})
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append({"path": str(path), "reason": "not an image file"})
            else:
                files.append((path, label))
                found += 1
        if not found:
            raise SourceError(f"{class_dir}: class folder '{class_dir.name}' holds no images")
    return [d.name for d in class_dirs], files, skipped


def _check_classes(source: str | Path, found: list[str], needed: int) -> None:
    if len(found) < needed:
        raise SourceError(
            f"{source}: only {len(found)} class found ({', '.join(map(repr, found))}); "
            f"a classifier needs at least {needed}"
        )


def read_folder(
    root: Path, size: int, on_bad_image: str = "error", min_classes: int = 1
) -> LoadedSource:
    """Decode every image of a class-folder tree (threads, progress shown); bad images error or skip.

    Pillow releases the GIL while decoding, so a few threads keep the CPUs and the disk busy.
    """
    from concurrent.futures import ThreadPoolExecutor

    class_names, files, skipped = scan_folder(root)
    _check_classes(root, class_names, min_classes)
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    keep = np.zeros(len(files), dtype=bool)
    sizes: dict[str, int] = {}
    bad: list[dict[str, str]] = []
    workers = min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_try_decode, [p for p, _ in files], [size] * len(files))
        for i, result in enumerate(progress(results, total=len(files), desc="decode")):
            if isinstance(result, SourceError):
                if on_bad_image != "skip":
                    raise result
                bad.append({"path": str(files[i][0]), "reason": str(result)})
                log.warning("skipping %s", result)
                continue
            images[i], (h, w) = result
            keep[i] = True
            sizes[f"{h}x{w}"] = sizes.get(f"{h}x{w}", 0) + 1
    if not keep.any():
        raise SourceError(f"{root}: no readable images")
    labels = np.array([label for _, label in files], dtype=np.int64)
    ids = np.array([p.relative_to(root).as_posix() for p, _ in files])
    return LoadedSource(
        images=images[keep],
        labels=labels[keep],
        ids=ids[keep],
        class_names=class_names,
        description={"kind": "folder", "path": str(root), "files": len(files)},
        original_sizes=sizes,
        skipped=skipped,
        bad_images=bad,
    )


# --------------------------------------------------------------------------- npz


def read_npz(path: Path, size: int) -> LoadedSource:
    """Read an .npz in the challenge or MedMNIST layout, checking keys, shapes, dtypes, labels."""
    with open_npz(path) as archive:
        keys = set(archive.files)
        class_names = (
            _npz_class_names(path, archive) if "class_names" in keys else list(CLASS_NAMES)
        )
        if "images" in keys or "labels" in keys:
            parts = {
                "all": (npz_array(path, archive, "images"), npz_array(path, archive, "labels"))
            }
            layout = "challenge"
        elif any(f"{s}_images" in keys for s in SPLIT_NAMES):
            parts = {}
            for split in SPLIT_NAMES:
                if f"{split}_images" in keys or f"{split}_labels" in keys:
                    parts[split] = (
                        npz_array(path, archive, f"{split}_images"),
                        npz_array(path, archive, f"{split}_labels"),
                    )
            layout = "medmnist"
        else:
            raise SourceError(
                f"{path}: unknown .npz layout (keys: {', '.join(sorted(keys)) or 'none'}); expected "
                "'images' and 'labels', or MedMNIST's 'train_images', 'train_labels', 'val_*', 'test_*'"
            )
    all_images, all_labels, all_ids, given = [], [], [], []
    for split, (images, labels) in parts.items():
        key = "images" if split == "all" else f"{split}_images"
        lkey = "labels" if split == "all" else f"{split}_labels"
        _check_images(path, key, images)
        labels = _check_labels(path, lkey, labels, len(images), len(class_names))
        all_images.append(images)
        all_labels.append(labels)
        prefix = "" if split == "all" else f"{split}/"
        all_ids.extend(f"{prefix}{i:06d}" for i in range(len(images)))
        given.extend([split] * len(images))
    images = np.concatenate(all_images)
    height, width = images.shape[1:3]
    if (height, width) != (size, size):
        resized = np.empty((len(images), size, size, 3), dtype=np.uint8)
        for i in progress(range(len(images)), total=len(images), desc="resize"):
            resized[i] = to_working_size(images[i], size)
        images = resized
    return LoadedSource(
        images=images,
        labels=np.concatenate(all_labels),
        ids=np.array(all_ids),
        class_names=class_names,
        description={"kind": "npz", "layout": layout, "path": str(path)},
        original_sizes={f"{height}x{width}": len(images)},
        given_splits=None if layout == "challenge" else np.array(given),
    )


def open_npz(path: Path) -> Any:
    """An .npz opened without pickle; a truncated, corrupt or non-.npz file is a SourceError."""
    try:
        archive = np.load(path, allow_pickle=False)
    except NPZ_ERRORS as exc:
        raise SourceError(f"{path}: not a readable .npz file ({exc})") from exc
    if not hasattr(archive, "files"):
        raise SourceError(f"{path}: not an .npz archive (a single .npy array?)")
    return archive


def npz_array(path: Path, archive: Any, key: str) -> np.ndarray:
    if key not in archive.files:
        raise SourceError(f"{path}: missing key '{key}' (keys: {', '.join(sorted(archive.files))})")
    try:
        return archive[key]
    except NPZ_ERRORS as exc:  # object arrays need pickle (refused); a truncated file fails too
        why = "cannot be loaded without pickle" if "pickle" in str(exc) else "unreadable"
        raise SourceError(f"{path}: key '{key}': {why} ({exc})") from exc


def _npz_class_names(path: Path, archive: Any) -> list[str]:
    names = npz_array(path, archive, "class_names")
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) < 2:
        raise SourceError(f"{path}: key 'class_names': expected a 1-D list of at least 2 strings")
    out = [str(n.decode() if isinstance(n, bytes) else n) for n in names]
    if len(set(out)) != len(out):
        raise SourceError(f"{path}: key 'class_names': names must be unique")
    return out


def _check_images(path: Path, key: str, images: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise SourceError(f"{path}: key '{key}': expected shape N x H x W x 3, got {images.shape}")
    if images.dtype != np.uint8:
        raise SourceError(f"{path}: key '{key}': expected dtype uint8, got {images.dtype}")
    if len(images) == 0:
        raise SourceError(f"{path}: key '{key}': holds no images")


def _check_labels(path: Path, key: str, labels: np.ndarray, count: int, classes: int) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise SourceError(f"{path}: key '{key}': expected shape N or N x 1, got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise SourceError(f"{path}: key '{key}': expected integer labels, got {labels.dtype}")
    if len(labels) != count:
        raise SourceError(f"{path}: key '{key}': {len(labels)} labels for {count} images")
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        raise SourceError(
            f"{path}: key '{key}': label {labels[bad[0]]} at index {bad[0]} is out of range "
            f"0..{classes - 1} ({bad.size} such labels)"
        )
    return labels.astype(np.int64)


# --------------------------------------------------------------------------- BloodMNIST


def _bloodmnist_size(text: str) -> int:
    value = text.split(":", 1)[1]
    if not value.isdigit() or int(value) not in BLOODMNIST_MD5:
        sizes = ", ".join(str(s) for s in BLOODMNIST_MD5)
        raise SourceError(f"{text}: BloodMNIST comes in sizes {sizes}, e.g. bloodmnist:64")
    return int(value)


def bloodmnist_url(size: int) -> str:
    """The download URL; the base is overridable with $HEMAFLOW_BLOODMNIST_URL (mirrors, tests)."""
    base = os.environ.get(BLOODMNIST_URL_ENV, BLOODMNIST_BASE_URL).rstrip("/")
    name = "bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz"
    return f"{base}/{name}?download=1"


def md5_file(path: Path) -> str:
    """The MD5 that MedMNIST publishes for its files (a checksum, not security)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def fetch_bloodmnist(size: int, cache_dir: str = "") -> Path:
    """The verified BloodMNIST file from the cache, downloading it first when needed.

    The cache is ``cache_dir`` (``data.cache_dir``) or else :func:`storage.cache_root`.

    The download goes to a temporary name and is renamed only once its MD5 matches, so the
    cache never holds a partial or corrupt file under the final name.
    """
    expected = BLOODMNIST_MD5[size]
    root = Path(cache_dir).expanduser() if cache_dir else storage.cache_root()
    folder = root / "bloodmnist"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"bloodmnist_{size}.npz"
    if final.is_file():
        if md5_file(final) == expected:
            return final
        log.warning("%s: cached file fails its MD5 check; downloading again", final)
        final.unlink()
    url = bloodmnist_url(size)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for block in _download_blocks(url):
                out.write(block)
        actual = md5_file(tmp)
        if actual != expected:
            raise SourceError(
                f"{url}: checksum mismatch: MD5 {actual}, expected {expected}; the file was discarded"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _download_blocks(url: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 - https or a test server
    except (urllib.error.URLError, OSError) as exc:
        raise SourceError(f"{url}: download failed ({exc})") from exc
    with response:
        length = int(response.headers.get("Content-Length") or 0)
        total = -(-length // chunk) if length else None

        def blocks() -> Iterator[bytes]:
            while block := response.read(chunk):
                yield block

        yield from progress(blocks(), total=total, desc=f"download {url.rsplit('/', 1)[-1]}")
