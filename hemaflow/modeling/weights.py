"""Pretrained backbone weights without internet: Keras's own files, mirrors, verification.

``model.weights`` is one value for every backbone of a run, so besides ``none``, ``imagenet``
(Keras downloads from its origin, which pods without egress cannot reach) and a single file
(one backbone), it may name a *mirror*: a folder or gs:// prefix holding one file per backbone
under Keras's own file name, filled once by ``hemaflow weights fetch`` from a machine with
internet, plus an index (``weights.json``) recording each file's hash and size.

Keras's file name, origin and published hash for a backbone are not copied into a table that
would go stale with the next Keras release: :func:`discover` asks Keras itself, by calling the
keras.applications constructor with ``weights="imagenet"`` while ``get_file`` is intercepted
to record its arguments and stop before anything is downloaded. Some files have no published
hash (MobileNetV2's); for those the index records the sha256 of the file fetched, and a
mirror without an index loads them unverified.

The pure parts (names, paths, index entries, hash checks on a local file) are separate from
the I/O at the edges (:func:`fetch`, :func:`local_file`, :func:`check_mirror`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import random
import tempfile
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from hemaflow import storage
from hemaflow.errors import HemaflowError
from hemaflow.progress import progress

log = logging.getLogger("hemaflow.weights")

INDEX = "weights.json"
INDEX_KIND = "hemaflow-weights-mirror"
#: Names ending so are one weights file; any other value (or one ending in "/") is a mirror.
FILE_SUFFIXES = (".h5", ".hdf5", ".keras")
CHUNK = 1 << 20

WeightsKind = Literal["none", "imagenet", "file", "mirror"]


class AppSpec(Protocol):
    """How a keras.applications backbone is built (the zoo's ``BackboneSpec``)."""

    @property
    def constructor(self) -> str: ...

    @property
    def kwargs(self) -> tuple[tuple[str, Any], ...]: ...


class WeightsError(HemaflowError, ValueError):
    """Weights that cannot serve a backbone: unknown backbone, bad hash, wrong file."""


class MissingWeightsError(WeightsError, OSError):
    """A mirror, or a backbone's file in it, that is not there (also an OSError: a missing path)."""


@dataclass(frozen=True)
class KerasFile:
    """What Keras would download for one backbone at one image size (include_top=False)."""

    backbone: str
    image_size: int
    fname: str
    origin: str
    file_hash: str | None
    cache_subdir: str = "models"

    @property
    def algorithm(self) -> str | None:
        """Keras's own rule ("auto"): a 64-character hash is sha256, any other md5."""
        return hash_algorithm(self.file_hash) if self.file_hash else None


def hash_algorithm(file_hash: str) -> str:
    return "sha256" if len(file_hash) == 64 else "md5"


# --------------------------------------------------------------------------- discovery


class _Intercepted(Exception):
    """Raised from the stand-in ``get_file`` to stop a constructor before any download."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        super().__init__("get_file intercepted")
        self.arguments = arguments


_INTERCEPT_LOCK = threading.Lock()


@contextlib.contextmanager
def _intercepted_get_file() -> Iterator[None]:
    """Replace keras's ``file_utils.get_file`` (what every application module calls) by a
    recorder that raises :class:`_Intercepted` with the call's bound arguments."""
    from keras.src.utils import file_utils

    original = file_utils.get_file
    signature = inspect.signature(original)

    def record(*args: Any, **kwargs: Any) -> str:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        raise _Intercepted(dict(bound.arguments))

    with _INTERCEPT_LOCK:
        file_utils.get_file = record
        try:
            yield
        finally:
            file_utils.get_file = original


@contextlib.contextmanager
def _same_random_state() -> Iterator[None]:
    """Keep the Python RNG (which seeds Keras's unseeded initializers) as it was, so a
    discovery build does not change the initial weights of the models built after it."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


@functools.cache
def discover(backbone: str, image_size: int, spec: AppSpec) -> KerasFile:
    """Keras's file name, origin and published hash for ``backbone`` (built as ``spec`` says)
    at ``image_size`` px. Builds the architecture once (seconds for the largest backbones;
    cached per process)."""
    import keras

    constructor = getattr(keras.applications, spec.constructor)
    try:
        with _intercepted_get_file(), _same_random_state(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # No name=: EfficientNet and ConvNeXt derive the file name from the model's name.
            constructor(
                include_top=False,
                weights="imagenet",
                input_shape=(image_size, image_size, 3),
                **dict(spec.kwargs),
            )
    except _Intercepted as stop:
        args = stop.arguments
        return KerasFile(
            backbone=backbone,
            image_size=image_size,
            fname=str(args["fname"]),
            origin=str(args["origin"]),
            file_hash=args.get("file_hash") or args.get("md5_hash") or None,
            cache_subdir=str(args.get("cache_subdir") or "models"),
        )
    except ValueError as exc:
        raise WeightsError(
            f"backbone {backbone!r} at {image_size} px: keras has no ImageNet weights for it "
            f"({' '.join(str(exc).split())})"
        ) from exc
    raise WeightsError(
        f"backbone {backbone!r} ({spec.constructor}): keras built it without asking for a "
        "weights file"
    )


def no_keras_file(backbone: str, known: bool, pretrainable: Iterable[str]) -> WeightsError:
    """The error for a backbone that has no Keras file: unknown, or trained from scratch."""
    names = ", ".join(sorted(pretrainable))
    if not known:
        return WeightsError(
            f"backbone {backbone!r} is unknown; backbones with Keras weights files: {names}"
        )
    return WeightsError(
        f"backbone {backbone!r} is trained from scratch and has no Keras weights file; "
        f"backbones with one: {names}"
    )


# --------------------------------------------------------------------------- pure parts


def weights_kind(value: str | None) -> WeightsKind:
    """What a ``model.weights`` value names, from its text alone (local folders: see
    :func:`kind_of`)."""
    text = (value or "").strip()
    if text in ("", "none"):
        return "none"
    if text == "imagenet":
        return "imagenet"
    if text.endswith("/"):
        return "mirror"
    return "file" if text.lower().endswith(FILE_SUFFIXES) else "mirror"


def mirror_uri(mirror: str, keras_file: KerasFile) -> str:
    """Where a backbone's file lives in a mirror: under Keras's own file name."""
    return storage.join(mirror, keras_file.fname)


def index_entry(keras_file: KerasFile, file_hash: str, nbytes: int, source: str) -> dict:
    """The index record of one fetched file: its hash (the published one when Keras has
    one, else the sha256 of what was fetched), size and where it came from."""
    return {
        "hash": file_hash,
        "algorithm": hash_algorithm(file_hash),
        "published": keras_file.file_hash is not None,
        "bytes": nbytes,
        "origin": source,
    }


def merge_index(index: dict, keras_file: KerasFile, entry: dict) -> dict:
    """``index`` with ``entry`` recorded as backbone -> file name -> entry."""
    backbones = {k: dict(v) for k, v in (index.get("backbones") or {}).items()}
    backbones.setdefault(keras_file.backbone, {})[keras_file.fname] = entry
    return {"kind": INDEX_KIND, "backbones": dict(sorted(backbones.items()))}


def recorded_hash(index: dict, keras_file: KerasFile) -> str | None:
    entry = (index.get("backbones") or {}).get(keras_file.backbone, {}).get(keras_file.fname)
    return entry.get("hash") if isinstance(entry, dict) else None


def file_hash_of(path: str | os.PathLike, algorithm: str) -> str:
    """The md5 or sha256 of a local file, as keras's ``hash_file`` computes it."""
    from keras.src.utils import file_utils

    return str(file_utils.hash_file(str(path), algorithm))


def verify(path: str | os.PathLike, expected: str, backbone: str, where: str, whose: str) -> None:
    """Raise a WeightsError unless the local file ``path`` has the hash ``expected``.

    ``where`` names the file for the message, ``whose`` says who vouches for the hash.
    """
    from keras.src.utils import file_utils

    if file_utils.validate_file(str(path), expected, algorithm="auto"):
        return
    algorithm = hash_algorithm(expected)
    actual = file_hash_of(path, algorithm)
    raise WeightsError(
        f"backbone {backbone!r}: {where} fails its {algorithm} check ({actual}; {whose} {expected})"
    )


# --------------------------------------------------------------------------- loading


def kind_of(value: str | None) -> WeightsKind:
    """:func:`weights_kind`, but a local folder is a mirror and a local file a file."""
    kind = weights_kind(value)
    if kind in ("file", "mirror") and not storage.is_gcs(value):
        path = Path(value).expanduser()
        if path.is_dir():
            return "mirror"
        if path.is_file():
            return "file"
    return kind


def read_index(mirror: str) -> dict:
    """The mirror's index, or ``{}`` when it has none (a mirror filled by hand)."""
    uri = storage.join(mirror, INDEX)
    if not storage.exists(uri):
        return {}
    try:
        body = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{uri}: not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("kind") != INDEX_KIND:
        raise WeightsError(f"{uri}: not a hemaflow weights index (kind {INDEX_KIND!r})")
    return body


def _require_in_mirror(mirror: str, keras_file: KerasFile) -> str:
    """The URI of the backbone's file in ``mirror``; MissingWeightsError when it is not there."""
    uri = mirror_uri(mirror, keras_file)
    if storage.exists(uri):
        return uri
    backbone = keras_file.backbone
    if not storage.exists(mirror):
        raise MissingWeightsError(
            f"backbone {backbone!r}: weights mirror {mirror} does not exist (expected "
            f"{keras_file.fname} in it; fill it with: hemaflow weights fetch --backbone "
            f"{backbone} --image-size {keras_file.image_size} --to {mirror})"
        )
    if not storage.is_gcs(mirror) and not Path(mirror).expanduser().is_dir():
        raise WeightsError(f"backbone {backbone!r}: weights mirror {mirror} is not a folder")
    raise MissingWeightsError(
        f"backbone {backbone!r}: weights mirror {mirror} has no {keras_file.fname} (add it "
        f"with: hemaflow weights fetch --backbone {backbone} --image-size "
        f"{keras_file.image_size} --to {mirror})"
    )


def local_file(weights: str, backbone: str, image_size: int, spec: AppSpec) -> str | None:
    """A local, verified weights file for ``backbone``'s ``model.weights``, or None for none.

    ``imagenet``: Keras's own download (cached in ~/.keras, checked against its hash).
    A single file: a local copy of it, as it is. A mirror: the backbone's file, checked
    against the index's hash, or Keras's published one when the mirror has no index.
    """
    kind = kind_of(weights)
    if kind == "none":
        return None
    if kind == "file":
        if not storage.exists(weights):
            raise MissingWeightsError(f"backbone {backbone!r}: weights file {weights} not found")
        return str(storage.local_path(weights))
    keras_file = discover(backbone, image_size, spec)
    if kind == "imagenet":
        import keras

        return str(
            keras.utils.get_file(
                keras_file.fname,
                keras_file.origin,
                file_hash=keras_file.file_hash,
                cache_subdir=keras_file.cache_subdir,
            )
        )
    uri = _require_in_mirror(weights, keras_file)
    expected = recorded_hash(read_index(weights), keras_file)
    whose = f"{INDEX} records"
    if expected is None and keras_file.file_hash:
        expected, whose = keras_file.file_hash, "Keras publishes"
    path = storage.local_path(uri)
    if expected:
        verify(path, expected, backbone, uri, whose)
    else:
        log.warning("%s: no hash published or recorded; loaded unverified", uri)
    return str(path)


def load_into(model: Any, path: str, backbone: str, image_size: int) -> None:
    """Load ``path`` into a freshly built backbone; a file for another backbone or input
    shape (keras's ValueError), or no weights file at all, becomes one WeightsError naming
    both."""
    try:
        model.load_weights(path)
    except OSError as exc:  # h5py: not an HDF5 file, or cut off
        raise WeightsError(
            f"backbone {backbone!r}: weights file {path} is not a readable weights file "
            f"({' '.join(str(exc).split())})"
        ) from exc
    except ValueError as exc:
        reason = " ".join(str(exc).split())
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise WeightsError(
            f"backbone {backbone!r} at {image_size} px: weights file {path} does not fit it "
            f"(another backbone or input shape?): {reason}"
        ) from exc


def check_mirror(weights: str, specs: Mapping[str, AppSpec], image_size: int) -> None:
    """Refuse a run whose weights cannot serve every pretrained candidate (``specs``: backbone
    -> how it is built), before any data is read: the file or mirror must exist and the
    mirror must hold each backbone's file. Only existence is checked (no download, no hash);
    the stages verify what they load. Discovery runs only for a mirror."""
    kind = kind_of(weights)
    if kind in ("none", "imagenet") or not specs:
        return
    if kind == "file":
        if not storage.exists(weights):
            first = next(iter(specs))
            raise MissingWeightsError(f"backbone {first!r}: weights file {weights} not found")
        return
    for backbone, spec in specs.items():
        _require_in_mirror(weights, discover(backbone, image_size, spec))


# --------------------------------------------------------------------------- fetching


def source_url(keras_file: KerasFile, base: str | None) -> str:
    """Where to fetch a file: Keras's origin, or ``base/<file name>`` (an internal mirror)."""
    if not base:
        return keras_file.origin
    if "://" in base and not storage.is_gcs(base):
        return f"{base.rstrip('/')}/{keras_file.fname}"
    return storage.join(base, keras_file.fname)


def _http_blocks(url: str, backbone: str) -> Iterator[bytes]:
    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 - http(s) or file
    except urllib.error.HTTPError as exc:
        raise WeightsError(
            f"backbone {backbone!r}: {url}: HTTP {exc.code} {exc.reason}".rstrip()
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsError(f"backbone {backbone!r}: {url}: download failed ({reason})") from exc
    with response:
        length = int(response.headers.get("Content-Length") or 0)
        total = -(-length // CHUNK) if length else None

        def blocks() -> Iterator[bytes]:
            while block := response.read(CHUNK):
                yield block

        yield from progress(blocks(), total=total, desc=f"download {url.rsplit('/', 1)[-1]}")


def _download(url: str, target: Path, backbone: str) -> None:
    """Copy ``url`` (http(s), file://, a local path or gs://) to the local file ``target``."""
    if "://" in url and not storage.is_gcs(url):
        with open(target, "wb") as out:
            for block in _http_blocks(url, backbone):
                out.write(block)
        return
    if not storage.exists(url):
        raise MissingWeightsError(f"backbone {backbone!r}: {url} not found")
    with open(storage.local_path(url), "rb") as src, open(target, "wb") as out:
        while block := src.read(CHUNK):
            out.write(block)


def _publish(local: Path, uri: str) -> None:
    """Put a local file at ``uri`` so readers see all of it or nothing (rename; a GCS object
    appears whole when its upload completes)."""
    if storage.is_gcs(uri):
        from hemaflow.storage import gcs

        gcs.upload_file(local, uri)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(local, target)


def _check_target(to: str) -> None:
    if not storage.is_gcs(to):
        path = Path(to).expanduser()
        if path.exists() and not path.is_dir():
            raise WeightsError(f"--to {to}: is a file; a weights mirror is a folder")
    else:
        storage.split_gcs(to)


def fetch(
    specs: Mapping[str, AppSpec], to: str, image_size: int, source: str | None = None
) -> list[dict]:
    """Download each backbone's Keras file (``specs``: backbone -> how it is built), verify
    it, and add it to the mirror ``to``.

    Every file name is found before anything is downloaded. Each file is verified before it
    is published; the index is rewritten after every file, so it never lists a file the
    mirror lacks.
    """
    _check_target(to)
    files = [discover(backbone, image_size, spec) for backbone, spec in specs.items()]
    to = str(Path(to).expanduser()) if not storage.is_gcs(to) else to
    index = read_index(to) if storage.exists(to) else {}
    fetched = []
    for keras_file in files:
        url = source_url(keras_file, source)
        uri = mirror_uri(to, keras_file)
        staging = Path(to) if not storage.is_gcs(to) else None
        if staging is not None:
            staging.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{keras_file.fname}.", suffix=".part", dir=staging)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _download(url, tmp, keras_file.backbone)
            if keras_file.file_hash:
                verify(tmp, keras_file.file_hash, keras_file.backbone, url, "Keras publishes")
                file_hash = keras_file.file_hash
            else:
                file_hash = _sha256(tmp)
                log.warning(
                    "%s: Keras publishes no hash for %s; recorded its sha256 %s in %s",
                    keras_file.backbone,
                    keras_file.fname,
                    file_hash,
                    INDEX,
                )
            entry = index_entry(keras_file, file_hash, tmp.stat().st_size, url)
            _publish(tmp, uri)
        finally:
            tmp.unlink(missing_ok=True)
        index = merge_index(index, keras_file, entry)
        _write_index(to, index)
        log.info("%s: %s (%d bytes) -> %s", keras_file.backbone, url, entry["bytes"], uri)
        fetched.append({"backbone": keras_file.backbone, "file": uri, **entry})
    return fetched


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _write_index(mirror: str, index: dict) -> None:
    text = json.dumps(index, indent=1, sort_keys=True) + "\n"
    uri = storage.join(mirror, INDEX)
    if not storage.is_gcs(mirror):
        storage.write_text_atomic(uri, text)
        return
    with tempfile.TemporaryDirectory(prefix="hemaflow-weights-") as tmp:
        local = Path(tmp, INDEX)
        local.write_text(text)
        _publish(local, uri)
