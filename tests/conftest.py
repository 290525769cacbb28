"""Shared fixtures: real pbc128 images (read-only, copied into tmp when a test needs a folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

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
    monkeypatch.setenv("HEMAFLOW_CACHE", str(tmp_path / "cache"))
