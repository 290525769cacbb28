"""Checkpoints that outlive the pod: a local working copy mirrored to a gs:// prefix.

Keras's ``BackupAndRestore`` and keras-tuner write to a local folder. A preempted node takes
its disk with it, so when a task's checkpoint folder is on gs:// a :class:`Store` keeps a
local working copy and mirrors each *part* of it (a training phase's folder, the tuner's
state) to ``REMOTE/PART/`` after every epoch or trial, and a restarted task pulls it back
before it fits.

GCS has no rename, so a save must never leave a state that restores wrongly if the process
is killed halfway. Each save uploads the files that changed into a new numbered prefix
(``REMOTE/PART/000007/...``) and then writes one small pointer object,
``REMOTE/PART/LATEST.json``, naming the object behind every file; a single object write is
atomic. Until the pointer is written a restore sees the previous save whole; objects no
pointer names (older saves, the upload of a killed save) are deleted after the next pointer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hemaflow import storage

log = logging.getLogger(__name__)

POINTER = "LATEST.json"


def task_key(out_dir: str) -> str:
    """The folder name of one output's checkpoints under a shared base: stable and unique."""
    digest = hashlib.sha1(str(out_dir).encode()).hexdigest()[:12]
    return f"{Path(str(out_dir).rstrip('/')).name}-{digest}"


def working_copy(remote: str) -> Path:
    """The local folder that mirrors the gs:// checkpoint prefix ``remote``."""
    bucket, name = storage.split_gcs(remote)
    return storage.cache_root() / "checkpoints" / bucket / name.strip("/")


def plan_save(
    local: dict[str, str], previous: dict[str, dict[str, str]], generation: int
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The next pointer's file table and the files to upload for it.

    ``local`` maps each file (relative path) to its SHA-256. A file unchanged since
    ``previous`` keeps its object; a new or changed one goes under ``generation``'s prefix.
    """
    files: dict[str, dict[str, str]] = {}
    uploads = []
    for rel, digest in sorted(local.items()):
        old = previous.get(rel)
        if old and old.get("sha256") == digest:
            files[rel] = old
        else:
            files[rel] = {"object": f"{generation:06d}/{rel}", "sha256": digest}
            uploads.append(rel)
    return files, uploads


def garbage(objects: list[str], files: dict[str, dict[str, str]]) -> list[str]:
    """Objects under a part's prefix that the pointer ``files`` no longer names."""
    keep = {entry["object"] for entry in files.values()} | {POINTER}
    return [name for name in objects if name not in keep]


@dataclass(frozen=True)
class Store:
    """One task's checkpoint folder: ``local``, mirrored to ``remote`` (gs://) when set."""

    local: Path
    remote: str = ""

    def restore(self, part: str) -> int:
        """Replace ``local/part`` by the last complete save of it; returns its generation.

        Without a remote there is nothing to pull (the local folder is the checkpoint). With
        one, the bucket decides: no save yet means a fresh start, whatever the local copy
        holds (it may be ahead of or behind what the bucket can promise).
        """
        if not self.remote:
            return 0
        target = self.local / part
        pointer = _read_pointer(self._prefix(part))
        shutil.rmtree(target, ignore_errors=True)
        if pointer is None:
            return 0
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{Path(part).name}.", dir=target.parent) as tmp:
            staged = Path(tmp) / "part"
            for rel, entry in pointer["files"].items():
                path = staged / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                _download(storage.join(self._prefix(part), entry["object"]), path)
                if storage.sha256_file(path) != entry["sha256"]:
                    raise storage.StorageError(f"{self._prefix(part)}: {rel} does not match")
            staged.mkdir(exist_ok=True)
            staged.rename(target)
        generation = int(pointer["generation"])
        log.info("restored %s (save %d) from %s", part, generation, self._prefix(part))
        return generation

    def save(self, part: str) -> int:
        """Mirror ``local/part`` to the bucket as a new save; returns its generation."""
        if not self.remote:
            return 0
        prefix = self._prefix(part)
        folder = self.local / part
        pointer = _read_pointer(prefix) or {"generation": 0, "files": {}}
        generation = int(pointer["generation"]) + 1
        local = {
            path.relative_to(folder).as_posix(): storage.sha256_file(path)
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
        files, uploads = plan_save(local, pointer["files"], generation)
        for rel in uploads:
            from hemaflow.storage import gcs

            gcs.upload_file(folder / rel, storage.join(prefix, files[rel]["object"]))
        _write_pointer(prefix, {"generation": generation, "files": files})
        for name in garbage(_list(prefix), files):
            _delete(storage.join(prefix, name))
        return generation

    def remove(self) -> None:
        """Delete the checkpoints, local and remote: the task's output is published."""
        shutil.rmtree(self.local, ignore_errors=True)
        if self.remote:
            for name in _list(self.remote):
                _delete(storage.join(self.remote, name))

    def callback(self, part: str) -> Any:
        """A Keras callback saving ``part`` after every epoch (put it after the writers)."""
        import keras

        store = self

        class SaveCheckpoint(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                store.save(part)

        return SaveCheckpoint()

    def _prefix(self, part: str) -> str:
        return storage.join(self.remote, part)


# --------------------------------------------------------------------------- gs:// edges


def _blob(uri: str) -> Any:
    from hemaflow.storage import gcs

    bucket, name = storage.split_gcs(uri)
    return gcs.client().bucket(bucket).blob(name)


def _read_pointer(prefix: str) -> dict[str, Any] | None:
    from google.api_core import exceptions

    try:
        return json.loads(_blob(storage.join(prefix, POINTER)).download_as_bytes())
    except exceptions.NotFound:
        return None


def _write_pointer(prefix: str, pointer: dict[str, Any]) -> None:
    _blob(storage.join(prefix, POINTER)).upload_from_string(
        json.dumps(pointer), content_type="application/json"
    )


def _download(uri: str, path: Path) -> None:
    _blob(uri).download_to_filename(str(path), checksum="auto")


def _list(prefix: str) -> list[str]:
    """Object names under ``prefix``, relative to it."""
    from hemaflow.storage import gcs

    bucket, name = storage.split_gcs(prefix)
    base = f"{name.strip('/')}/"
    return [b.name[len(base) :] for b in gcs.client().list_blobs(bucket, prefix=base)]


def _delete(uri: str) -> None:
    from google.api_core import exceptions

    with contextlib.suppress(exceptions.NotFound):
        _blob(uri).delete()
