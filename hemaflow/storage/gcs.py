"""Google Cloud Storage behind :mod:`hemaflow.storage`: cached reads, atomic publication.

Reads download an object, or every object under a prefix, into a local cache; the CRC32C of
each cached object is kept in a parallel tree (never beside the file, so a cached folder holds
exactly the objects), so a second read of an unchanged object does not download again and a
changed one is fetched anew. Downloads and uploads are checksum-verified
by google-cloud-storage.

GCS has no rename, so a folder is published in three steps: upload everything under a
temporary prefix, copy it into place (server side), write the ``_COMPLETE`` marker last, then
delete the temporary prefix. The final prefix's marker is removed before anything there
changes, so a failure at any point leaves no object under the final name that a reader
(checking :func:`hemaflow.storage.is_complete`) would take as a complete artifact.

Credentials come from the environment: Application Default Credentials (a service account
key file named by GOOGLE_APPLICATION_CREDENTIALS, gcloud's user login, or the workload
identity of a GKE/Vertex pod). With STORAGE_EMULATOR_HOST set, the client talks to that
emulator anonymously. Only URIs are ever logged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hemaflow.storage.paths import (
    COMPLETE_MARKER,
    GCS_PREFIX,
    MANIFEST,
    StorageError,
    incomplete,
    split_gcs,
    unfinished,
)

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".crc32c"
OBJECTS, CHECKSUMS, PARTIAL = "objects", "checksums", "partial"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def client() -> Any:
    """A ``google.cloud.storage.Client`` from the environment (emulator or ADC)."""
    return _client_for(os.environ.get(EMULATOR_ENV, ""), os.environ.get("GOOGLE_CLOUD_PROJECT"))


@functools.lru_cache(maxsize=4)
def _client_for(emulator: str, project: str | None) -> Any:
    from google.cloud import storage

    if emulator:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=project or "hemaflow-local", credentials=AnonymousCredentials()
        )
    import google.auth.exceptions

    try:
        return storage.Client(project=project)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise StorageError(
            "no Google Cloud credentials found: run 'gcloud auth application-default login', "
            "set GOOGLE_APPLICATION_CREDENTIALS, or run with a workload identity "
            f"(or set {EMULATOR_ENV} for an emulator)"
        ) from exc


def _uri(bucket: str, name: str) -> str:
    return f"{GCS_PREFIX}{bucket}/{name}"


def _bucket(bucket_name: str, uri: str) -> Any:
    """The bucket, checked to exist, so that a typo is named instead of reported as 404."""
    from google.api_core import exceptions

    try:
        return client().get_bucket(bucket_name)
    except exceptions.NotFound as exc:
        raise StorageError(f"{uri}: bucket '{bucket_name}' does not exist") from exc
    except exceptions.Forbidden as exc:
        raise StorageError(f"{uri}: no permission to access bucket '{bucket_name}'") from exc


# --------------------------------------------------------------------------- reads


def exists(uri: str) -> bool:
    """Whether ``uri`` names an object or a non-empty prefix (False for a missing bucket)."""
    from google.api_core import exceptions

    bucket_name, name = split_gcs(uri)
    bucket = client().bucket(bucket_name)
    try:
        if name and not name.endswith("/") and bucket.blob(name).exists():
            return True
        prefix = f"{name.rstrip('/')}/" if name else ""
        return any(True for _ in client().list_blobs(bucket_name, prefix=prefix, max_results=1))
    except exceptions.NotFound:
        return False


def download(uri: str, cache_dir: Path) -> Path:
    """A local copy of an object, or of every object under a prefix ("folder"), from cache.

    The copy lives at ``cache_dir/objects/<bucket>/<name>``; files whose CRC32C matches the
    object's are not downloaded again; local files no longer under the prefix are removed.
    An artifact folder without its completion marker is refused before anything is fetched.
    """
    bucket_name, name = split_gcs(uri)
    bucket = _bucket(bucket_name, uri)
    cache = _Cache(Path(cache_dir), bucket_name)
    root = cache.objects
    if name and not name.endswith("/"):
        blob = bucket.get_blob(name)
        if blob is not None:
            return _fetch(blob, name, cache)
    prefix = f"{name.rstrip('/')}/" if name else ""
    blobs = [b for b in client().list_blobs(bucket_name, prefix=prefix) if not b.name.endswith("/")]
    if not blobs:
        raise StorageError(f"{uri}: no such object or folder in bucket '{bucket_name}'")
    if unfinished({b.name[len(prefix) :] for b in blobs}):
        raise incomplete(uri)
    folder = root / prefix if prefix else root
    wanted = set()
    for blob in blobs:
        wanted.add(_fetch(blob, blob.name, cache))
    _prune(folder, wanted, cache)
    return folder


class _Cache:
    """Where one bucket's objects, their checksums and partial downloads live locally."""

    def __init__(self, cache_dir: Path, bucket: str) -> None:
        self.objects = cache_dir / OBJECTS / bucket
        self.checksums = cache_dir / CHECKSUMS / bucket
        self.partial = cache_dir / PARTIAL

    def stamp(self, target: Path) -> Path:
        rel = target.relative_to(self.objects)
        return (self.checksums / rel).with_name(rel.name + CHECKSUM_SUFFIX)


def _fetch(blob: Any, name: str, cache: _Cache) -> Path:
    """Download one blob into the cache unless the cached copy has the same CRC32C."""
    target = cache.objects / name
    stamp = cache.stamp(target)
    checksum = blob.crc32c or blob.md5_hash or ""
    if target.is_file() and stamp.is_file() and checksum and stamp.read_text() == checksum:
        return target
    for folder in (target.parent, stamp.parent, cache.partial):
        folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".part", dir=cache.partial)
    os.close(fd)
    from google.api_core import exceptions

    try:
        blob.download_to_filename(tmp, checksum="auto")
        os.replace(tmp, target)
    except exceptions.NotFound as exc:
        raise StorageError(f"{_uri(blob.bucket.name, blob.name)}: object vanished") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    stamp.write_text(checksum)
    log.debug("downloaded %s", _uri(blob.bucket.name, blob.name))
    return target


def _prune(folder: Path, wanted: set[Path], cache: _Cache) -> None:
    """Delete cached files under ``folder`` that are no longer objects under the prefix."""
    for path in list(folder.rglob("*")):
        if path.is_file() and path not in wanted:
            path.unlink()
            cache.stamp(path).unlink(missing_ok=True)


# --------------------------------------------------------------------------- writes


def upload_file(local: str | os.PathLike, uri: str) -> None:
    """Upload one local file to ``uri`` (CRC32C-verified by the client)."""
    from google.api_core import exceptions
    from google.api_core.retry import Retry

    bucket_name, name = split_gcs(uri)
    if not name or name.endswith("/"):
        raise StorageError(f"{uri}: an upload needs an object name, not a bucket or folder")
    blob = client().bucket(bucket_name).blob(name)
    try:
        blob.upload_from_filename(str(local), checksum="crc32c", retry=Retry(timeout=120))
    except exceptions.NotFound as exc:
        raise StorageError(f"{uri}: bucket '{bucket_name}' does not exist") from exc


def _local_files(local_dir: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(local_dir.rglob("*")):
        if path.is_file() and path.name != COMPLETE_MARKER:
            yield path, path.relative_to(local_dir).as_posix()


def _copy_object(bucket: Any, source: str, dest: str) -> None:
    """Server-side copy (rewrite handles objects of any size, in as many calls as needed)."""
    target = bucket.blob(dest)
    token, _, _ = target.rewrite(bucket.blob(source))
    while token is not None:
        token, _, _ = target.rewrite(bucket.blob(source), token=token)


def _delete_prefix(bucket: Any, prefix: str) -> None:
    from google.api_core import exceptions

    for blob in list(client().list_blobs(bucket.name, prefix=prefix)):
        with contextlib.suppress(exceptions.NotFound):
            blob.delete()


def publish_dir(local_dir: Path, final_uri: str) -> None:
    """Publish a finished local folder at ``final_uri`` so readers see all of it or none.

    Replaces any artifact already there. A failure leaves the final prefix without its
    ``_COMPLETE`` marker (so :func:`hemaflow.storage.is_complete` is False) and removes the
    temporary prefix.
    """
    bucket_name, name = split_gcs(final_uri)
    final = name.strip("/")
    if not final:
        raise StorageError(f"{final_uri}: publish into a folder of the bucket, not its root")
    bucket = _bucket(bucket_name, final_uri)
    parent, _, leaf = final.rpartition("/")
    staging = f"{parent + '/' if parent else ''}.{leaf}.staging-{uuid.uuid4().hex[:12]}/"
    files = list(_local_files(Path(local_dir)))
    try:
        for path, rel in files:
            upload_file(path, _uri(bucket_name, staging + rel))
        marker = bucket.blob(f"{final}/{COMPLETE_MARKER}")
        if marker.exists():
            marker.delete()
        new = {f"{final}/{rel}" for _, rel in files}
        for blob in list(client().list_blobs(bucket_name, prefix=f"{final}/")):
            if blob.name not in new:
                blob.delete()
        # The manifest goes first, so a copy cut off midway is recognisably an artifact
        # (and refused by readers for want of its marker).
        for _, rel in sorted(files, key=lambda file: file[1] != MANIFEST):
            _copy_object(bucket, staging + rel, f"{final}/{rel}")
        marker.upload_from_string(b"")
    except Exception as exc:
        _cleanup(bucket, staging)
        if isinstance(exc, StorageError):
            raise
        raise StorageError(
            f"{final_uri}: publishing failed, artifact left incomplete: {exc}"
        ) from exc
    _cleanup(bucket, staging)
    log.info("published %s (%d files)", final_uri, len(files))


def _cleanup(bucket: Any, staging: str) -> None:
    try:
        _delete_prefix(bucket, staging)
    except Exception as exc:  # best effort: the staging prefix is never read
        log.warning("could not remove temporary objects under %s: %s", staging, exc)
