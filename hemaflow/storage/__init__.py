"""Paths that may be local or ``gs://``, and artifacts written atomically to either.

Stages never open final paths directly. They write into a local staging folder given by
:func:`artifact_dir` and the folder is published only when the block ends without error:
locally by a rename, on GCS by uploading under a temporary prefix, copying into place and
writing the ``_COMPLETE`` marker last. A failed stage leaves no partial artifact under the
final name. Reads of ``gs://`` objects go through a local cache keyed by the object's CRC32C.

Readers trust only complete artifacts: a folder with a ``manifest.json`` (what marks a hemaflow
artifact) but no ``_COMPLETE`` marker, left by an upload or copy cut off midway, is refused
with :class:`IncompleteArtifactError` by :func:`local_path`, :func:`readable`,
:func:`read_json` and :func:`require_complete`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from hemaflow.storage.paths import (
    COMPLETE_MARKER,
    GCS_PREFIX,
    MANIFEST,
    IncompleteArtifactError,
    OutputError,
    StorageError,
    cache_root,
    incomplete,
    is_gcs,
    join,
    sha256_file,
    split_gcs,
    unfinished,
)

__all__ = [
    "COMPLETE_MARKER",
    "GCS_PREFIX",
    "MANIFEST",
    "IncompleteArtifactError",
    "OutputError",
    "StorageError",
    "cache_root",
    "is_gcs",
    "join",
    "sha256_file",
    "split_gcs",
]


# --------------------------------------------------------------------------- local views


def local_path(uri: str | os.PathLike) -> Path:
    """A local file or folder holding the content of ``uri`` (downloaded and cached for gs://).

    An artifact folder without its completion marker is refused (for gs://, before download).
    """
    if not is_gcs(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise StorageError(f"{path}: no such file or folder")
        return _finished(path)
    from hemaflow.storage import gcs

    return gcs.download(str(uri), cache_root() / "gcs")


def exists(uri: str | os.PathLike) -> bool:
    if not is_gcs(uri):
        return Path(uri).expanduser().exists()
    from hemaflow.storage import gcs

    return gcs.exists(str(uri))


def read_bytes(uri: str | os.PathLike) -> bytes:
    return local_path(uri).read_bytes()


def read_text(uri: str | os.PathLike) -> str:
    return local_path(uri).read_text()


def readable(uri: str | os.PathLike) -> str:
    """A path TensorFlow and Beam can read: gs:// goes through the local cache, because
    TensorFlow's own GCS file system has a fixed endpoint (it ignores STORAGE_EMULATOR_HOST).
    A local path need not exist; an artifact folder there must be complete."""
    if is_gcs(uri):
        return str(local_path(uri))
    _finished(Path(uri).expanduser())
    return str(uri)


def _finished(path: Path) -> Path:
    if path.is_dir() and unfinished(os.listdir(path)):
        raise incomplete(path)
    return path


def require_complete(folder: str | os.PathLike, what: str = "artifact folder") -> None:
    """Refuse an artifact folder that lacks its marker; a missing folder is the caller's to name."""
    if not is_complete(folder) and exists(join(folder, MANIFEST)):
        raise incomplete(folder, what)


def read_json(
    folder: str | os.PathLike,
    name: str,
    what: str,
    error: type[Exception] = StorageError,
    kind: str | None = None,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The JSON object ``folder/name``, checked for its ``kind`` and ``required`` fields.

    Every artifact manifest is read here, so a missing, malformed or foreign file fails the
    same way whatever the artifact: one ``error`` naming the file and the ``what`` expected;
    a folder without its completion marker raises :class:`IncompleteArtifactError`.
    """
    uri = join(folder, name)
    try:
        text = read_text(uri)
    except StorageError as exc:
        raise error(f"{folder}: no {name}; not a {what}") from exc
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{uri}: not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise error(f"{uri}: expected a JSON object, got {type(body).__name__}")
    if kind is not None and body.get("kind") != kind:
        raise error(f"{uri}: kind is {body.get('kind')!r}, not {kind!r}; not a {what}")
    if not is_complete(folder):
        raise incomplete(folder, what)
    for key in required:
        if key not in body:
            raise error(f"{uri}: missing field '{key}'")
    return body


# --------------------------------------------------------------------------- atomic writes


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a local file so that readers see the old content or the new, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


@contextlib.contextmanager
def artifact_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Stage an output folder and publish it to ``final`` only if the block succeeds.

    An existing artifact at ``final`` is replaced whole on success and kept on failure;
    anything else there is refused before the block runs (:func:`check_output`).
    """
    check_output(final)
    final_str = str(final)
    if is_gcs(final_str):
        with tempfile.TemporaryDirectory(prefix="hemaflow-stage-") as tmp:
            staging = Path(tmp)
            yield staging
            from hemaflow.storage import gcs

            gcs.publish_dir(staging, final_str)
        return

    final_path = Path(final_str).expanduser().resolve()
    final_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.staging-", dir=final_path.parent))
    # mkdtemp makes the folder private (0700); a published artifact gets the usual permissions,
    # so that other users and containers running as another user can read it.
    staging.chmod(0o777 & ~_umask())
    try:
        yield staging
        (staging / COMPLETE_MARKER).write_text("")
        _swap_in(staging, final_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _swap_in(staging: Path, final: Path) -> None:
    if not final.exists():
        os.replace(staging, final)
        return
    try:
        check_output(final)
    except OutputError:
        # Something we did not write: refuse rather than delete a user's files.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(final, old)
    try:
        os.replace(staging, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def _looks_like_artifact(path: Path) -> bool:
    return (path / MANIFEST).exists() or (path / COMPLETE_MARKER).exists()


def check_output(
    out: str | os.PathLike,
    kind: Literal["folder", "file", "root"] = "folder",
    inputs: Iterable[str | os.PathLike | None] = (),
) -> None:
    """Refuse an output that cannot be written or whose writing would destroy something.

    Stages call this before any work, so a refused command has read and written nothing.
    ``kind`` is what goes there: an artifact ``folder`` (replaced whole), a ``file``
    (replaced whole), or a ``root`` folder that things are written into. A missing path or
    an empty folder (what KFP hands a task) passes, and so does an earlier artifact or file,
    which a successful run replaces; a file where a folder goes (or the reverse), a
    non-empty folder hemaflow did not write, an input, or a path inside an input or holding
    one raises :class:`OutputError` naming the path and why.
    """
    text = str(out)
    if not text.strip():
        raise OutputError("output path is empty")
    if is_gcs(text):
        if kind == "file":
            raise OutputError(f"{text}: this output is a local file; gs:// is not supported")
        split_gcs(text)
        if kind == "folder" and exists(text) and not _gcs_artifact(text):
            raise OutputError(
                f"{text}: holds objects and is not a hemaflow artifact; choose another output"
            )
        return
    path = Path(text).expanduser().resolve()
    for given in inputs:
        if given and not is_gcs(given) and Path(given).expanduser().exists():
            source = Path(given).expanduser().resolve()
            if source == path:
                raise OutputError(f"{text}: is also an input; choose another output")
            if source in path.parents:
                raise OutputError(f"{text}: is inside the input {given}; write it elsewhere")
            if path in source.parents and kind != "root":
                raise OutputError(
                    f"{text}: holds the input {given}, which writing it would replace"
                )
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        raise OutputError(f"{text}: {parent} is a file, not a folder")
    if not path.exists():
        return
    if kind == "file":
        if path.is_dir():
            raise OutputError(f"{text}: is a folder; give a file name")
    elif not path.is_dir():
        raise OutputError(f"{text}: exists and is a file, not a folder; choose another output")
    elif kind == "folder" and any(path.iterdir()) and not _looks_like_artifact(path):
        raise OutputError(
            f"{text}: exists and is not a hemaflow artifact (no {MANIFEST} or "
            f"{COMPLETE_MARKER}); choose another output folder"
        )


def _gcs_artifact(uri: str) -> bool:
    return exists(join(uri, COMPLETE_MARKER)) or exists(join(uri, MANIFEST))


def is_complete(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` is a published artifact folder (its completion marker exists)."""
    return exists(join(uri, COMPLETE_MARKER))
