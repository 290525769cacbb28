"""Compile the DAG to KFP IR YAML, and reduce IR to a stable structure for golden files.

Compiling is deterministic: the same config and target give a byte-identical file (the
wrappers' source, the parameters and every setting are emitted in a fixed order).
:func:`normalise` keeps what defines the pipeline's shape and scheduling - parameters, tasks,
dependencies, fan-outs, images, resources, retries, caching, node pools - and drops what
changes with the KFP release or a wrapper's docstring (sdkVersion, the embedded source).

Regenerate the golden file after an intended change with::

    python -m hemaflow.pipeline.compiler --golden
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hemaflow.pipeline.resources import Target

from hemaflow import storage
from hemaflow.config import Config, from_json, load_config
from hemaflow.errors import HemaflowError

GOLDEN_DIR = Path(__file__).parent / "golden"


class PackageError(HemaflowError, ValueError):
    """A file given as a compiled hemaflow pipeline that is not one."""


def compile_pipeline(config: Config, out: str | Path, target: Target = "kubeflow") -> Path:
    """Write the IR YAML of the pipeline for ``config`` to ``out`` (atomically)."""
    from hemaflow.pipeline.dag import build_pipeline
    from kfp import compiler

    out = Path(out)
    pipeline = build_pipeline(config, target)
    with tempfile.TemporaryDirectory(prefix="hemaflow-compile-") as tmp:
        staged = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(staged))
        storage.write_bytes_atomic(out, staged.read_bytes())
    return out


def load_ir(path: str | Path) -> dict[str, Any]:
    """A compiled file as one mapping: the pipeline spec, plus ``platforms`` if present."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PackageError(f"{path}: not a compiled KFP pipeline ({exc})") from exc
    if not docs or not isinstance(docs[0], dict) or not {"root", "deploymentSpec"} <= set(docs[0]):
        raise PackageError(f"{path}: not a compiled KFP pipeline (no root/deploymentSpec)")
    ir = dict(docs[0])
    for extra in docs[1:]:
        ir.update(extra)
    return ir


def compiled_config(path: str | Path) -> Config:
    """The config a compiled file was built for (the default of its ``config`` parameter)."""
    params = load_ir(path)["root"].get("inputDefinitions", {}).get("parameters", {})
    if "defaultValue" not in params.get("config", {}):
        raise PackageError(f"{path}: no config parameter; recompile it with 'hemaflow compile'")
    return from_json(params["config"]["defaultValue"], origin=f"{path}: config")


def normalise(ir: dict[str, Any]) -> dict[str, Any]:
    """The structure of a compiled pipeline, without release- or source-dependent text."""
    ir = copy.deepcopy(ir)
    ir.pop("sdkVersion", None)
    for executor in ir.get("deploymentSpec", {}).get("executors", {}).values():
        container = executor.get("container", {})
        container.pop("command", None)
        container.pop("args", None)
    return ir


def golden_path(profile: str, target: Target = "kubeflow") -> Path:
    suffix = "" if target == "kubeflow" else f"-{target}"
    return GOLDEN_DIR / f"{profile}{suffix}.yaml"


def render_golden(profile: str, target: Target = "kubeflow") -> str:
    """The golden text of a profile: its normalised IR, keys sorted."""
    with tempfile.TemporaryDirectory(prefix="hemaflow-golden-") as tmp:
        path = compile_pipeline(load_config(profile), Path(tmp) / "p.yaml", target)
        return golden_text(load_ir(path), profile, target)


def golden_text(ir: dict[str, Any], profile: str, target: Target = "kubeflow") -> str:
    header = (
        f"# Normalised compiled structure of the {profile!r} profile ({target}).\n"
        "# Regenerate after an intended change: python -m hemaflow.pipeline.compiler --golden\n"
    )
    return header + yaml.safe_dump(normalise(ir), sort_keys=True, width=100)


GOLDEN = (("quickstart", "kubeflow"), ("gpu", "kubeflow"), ("gpu", "vertex"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate hemaflow's golden pipeline files.")
    parser.add_argument("--golden", action="store_true", required=True)
    parser.parse_args(argv)
    for profile, target in GOLDEN:
        path = golden_path(profile, target)
        storage.write_text_atomic(path, render_golden(profile, target))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
