"""Where a path points (local or ``gs://``) and how to name things under it; no I/O but the cache root.

Kept apart from :mod:`hemaflow.storage` so that its GCS backend can use these without
importing the module that dispatches to it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from pathlib import Path

from hemaflow.errors import HemaflowError

COMPLETE_MARKER = "_COMPLETE"
MANIFEST = "manifest.json"  # what every artifact folder says about itself
GCS_PREFIX = "gs://"


class StorageError(HemaflowError, OSError):
    """A path or object is missing, unreadable or could not be written."""


class IncompleteArtifactError(HemaflowError):
    """An artifact folder whose publication never finished: it has no completion marker.

    Not a :class:`StorageError`, so code that reads a missing file as "not there" does not
    mistake a half-copied artifact for an absent one.
    """


def unfinished(names: Collection[str]) -> bool:
    """Whether a folder holding ``names`` (its top-level entries) is an artifact cut off early.

    A folder with a manifest is a hemaflow artifact, and every one hemaflow publishes carries
    the marker; raw sources (image folders, shard folders, .npz files) have no manifest.
    """
    return MANIFEST in names and COMPLETE_MARKER not in names


def incomplete(folder: str | os.PathLike, what: str = "artifact folder") -> IncompleteArtifactError:
    return IncompleteArtifactError(
        f"{folder}: {what} has no {COMPLETE_MARKER} marker: an interrupted write? "
        "Re-run the stage that makes it"
    )


class OutputError(StorageError):
    """An output path would destroy what is there or what a command reads, so nothing is done."""


def is_gcs(path: str | os.PathLike) -> bool:
    return str(path).startswith(GCS_PREFIX)


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts with '/' for gs:// and the OS separator locally."""
    if is_gcs(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_gcs(uri):
        raise StorageError(f"{uri}: not a gs:// URI")
    rest = uri[len(GCS_PREFIX) :]
    bucket, _, name = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: a gs:// URI needs a bucket name")
    return bucket, name


def cache_root() -> Path:
    root = Path(os.environ.get("HEMAFLOW_CACHE", "~/.cache/hemaflow")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
