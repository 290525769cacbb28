"""The guard: no training-side module can reach the independent benchmark or albumentations.

The independent benchmark is only worth something while training never sees its library:
if augmentation ever imported albumentations (or the benchmark module), the benchmark would
quietly turn into a second own suite. This walks the source's imports with ``ast`` (module
level and inside functions alike) from every training-side module, following ``hemaflow.*``
and ``components.*``, and checks the closure. It also checks that evaluate does reach the
benchmark, so the walk is shown to find what it looks for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {
    "hemaflow.components": ROOT / "components",
    "hemaflow.pipeline": ROOT / "pipeline",
    "components": ROOT / "components",
    "pipeline": ROOT / "pipeline",
    "hemaflow": ROOT / "hemaflow",
}
TRAINING_SIDE = (
    "components.augment",
    "components.compare",
    "components.tune",
    "components.train",
    "components.ensemble",
    "hemaflow.imaging.policy",
)
FORBIDDEN = ("hemaflow.imaging.independent", "albumentations")


def module_file(module: str) -> Path | None:
    """The source file of a project module (a package's __init__.py), or None if not ours."""
    for prefix in sorted(PACKAGE_DIRS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            base = PACKAGE_DIRS[prefix].joinpath(*module[len(prefix) :].split(".")[1:])
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
            return None
    return None


def canonical(module: str) -> str:
    """``components.x`` and ``hemaflow.components.x`` are one module."""
    for short in ("components", "pipeline"):
        if module == short or module.startswith(short + "."):
            return "hemaflow." + module
    return module


def imports_of(path: Path, module: str) -> set[str]:
    """Every module named by an import anywhere in ``path``, with ``from a import b``
    counted as ``a`` and, where ``a.b`` is a module, also ``a.b``; relative imports
    resolved against ``module``."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name}


def parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a`` and ``a.b`` first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(start: str) -> set[str]:
    """Every module (project or third-party, by top-level import name and full name)
    reachable from ``start`` through the project's source."""
    seen: set[str] = set()
    stack = [canonical(start)]
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module)
        if path is None:
            continue
        for name in imports_of(path, module):
            for reached in (*parents(name), name):
                reached = canonical(reached)
                if reached not in seen:
                    stack.append(reached)
    return seen


def reaches(start: str, target: str) -> bool:
    return any(m == target or m.startswith(target + ".") for m in closure(start))


def test_the_walk_follows_function_level_and_from_imports():
    # components/evaluate imports both only inside functions, one of them as ``from x import y``.
    reached = closure("components.evaluate")
    assert "hemaflow.imaging.corruptions" in reached
    assert "hemaflow.modeling.inference" in reached
    assert "hemaflow.config" in reached and "numpy" in reached


@pytest.mark.parametrize("start", TRAINING_SIDE)
def test_training_side_never_reaches_the_independent_benchmark(start):
    assert module_file(canonical(start)) is not None, f"{start}: no such module"
    for target in FORBIDDEN:
        assert not reaches(start, target), f"{start} reaches {target}"


def test_evaluate_reaches_the_independent_benchmark():
    assert reaches("components.evaluate", "hemaflow.imaging.independent")
    assert reaches("components.evaluate", "albumentations")
