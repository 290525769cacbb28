"""What `pip install .` puts into site-packages: one package, hemaflow, and nothing generic."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "hemaflow", "components", "pipeline")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the build writes beside them)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root), str(src)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = root.glob("hemaflow-*.whl")
    return built


def test_the_wheel_installs_only_the_hemaflow_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"hemaflow"}
    for expected in (
        "hemaflow/components/ingest.py",
        "hemaflow/components/evaluate.py",
        "hemaflow/pipeline/cli.py",
        "hemaflow/pipeline/commands/run.py",
        "hemaflow/data/sources.py",
        "hemaflow/profiles/cpu.yaml",
        "hemaflow/profiles/gpu.yaml",
        "hemaflow/profiles/quickstart.yaml",
        "hemaflow/pipeline/golden/quickstart.yaml",
    ):
        assert expected in names, expected
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hemaflow = hemaflow.pipeline.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_hemaflow_imports_and_generic_names_do_not(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib.util as u\n"
        "import hemaflow.components, hemaflow.pipeline.cli, hemaflow.config as c\n"
        "assert hemaflow.components.__file__.startswith(sys.argv[1]), hemaflow.components.__file__\n"
        "assert c.PROFILE_DIR.joinpath('cpu.yaml').is_file()\n"
        "print(u.find_spec('components'), u.find_spec('pipeline'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(target)],
        cwd=tmp_path,  # outside the checkout
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "None"]
