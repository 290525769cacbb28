"""Run the whole DAG on this machine through kfp.local, and hand its results to the user.

``subprocess`` runs every task with ``kfp.local.SubprocessRunner(use_venv=False)`` in the
current Python environment (where hemaflow is installed); ``docker`` runs each task in the
project image with ``kfp.local.DockerRunner``, a local data folder bind-mounted read-only at
the same path. The run gets the resolved config as its one parameter, as a submitted run
does (:func:`hemaflow.pipeline.dag.parameters`). KFP keeps its own pipeline root; with
``out`` the exported ensemble, its metrics and the HTML report are also copied to
``out/model``, ``out/metrics.json`` and ``out/report.html``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from hemaflow import storage
from hemaflow.config import Config
from hemaflow.errors import HemaflowError


class RunError(HemaflowError, RuntimeError):
    """The local run cannot start: unknown runner, image missing, Docker not reachable."""


Runner = Literal["subprocess", "docker"]
RUNNERS: tuple[str, ...] = get_args(Runner)


@dataclass
class LocalRun:
    """Where a finished local run left its results."""

    pipeline_root: Path
    model: Path
    evaluation: Path
    report: Path
    metrics: dict[str, Any]
    out: Path | None = None
    copied: dict[str, Path] = field(default_factory=dict)


def local_source(source: str) -> Path | None:
    """The local folder or file a source names; None for ``default``, gs:// and ``name:size``."""
    if source == "default" or re.match(r"^[A-Za-z][\w+.-]*:", source):
        return None
    return Path(source).expanduser().resolve()


def resolve_source(config: Config) -> Config:
    """Make a local data path absolute (tasks may run in another folder or a container)."""
    path = local_source(config.data.source)
    if path is None:
        return config
    if not path.exists():
        raise FileNotFoundError(f"{config.data.source}: data source not found")
    return config.replace({"data.source": str(path)})


def make_runner(kind: Runner, config: Config) -> Any:
    from kfp import local

    if kind == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    if kind != "docker":
        raise RunError(f"runner: {kind!r} is not one of {', '.join(RUNNERS)}")
    import docker

    try:
        docker.from_env().images.get(config.pipeline.image)
    except docker.errors.ImageNotFound as exc:
        raise RunError(
            f"image {config.pipeline.image!r} not found locally; build it "
            "(docker/README) or set --set pipeline.image=NAME"
        ) from exc
    except docker.errors.DockerException as exc:
        raise RunError(f"Docker engine not reachable ({exc}); is dockerd running?") from exc
    mounts = []
    path = local_source(config.data.source)
    if path is not None:
        mounts.append(
            docker.types.Mount(target=str(path), source=str(path), type="bind", read_only=True)
        )
    # Run as the invoking user, so tasks can write into the bind-mounted pipeline root and
    # the results belong to whoever started the run.
    return local.DockerRunner(mounts=mounts, user=f"{os.getuid()}:{os.getgid()}")


def run_local(
    config: Config,
    runner: Runner = "subprocess",
    out: str | Path | None = None,
    pipeline_root: str | Path | None = None,
    caching: bool = True,
) -> LocalRun:
    """Run the whole pipeline with kfp.local and return (and optionally copy) its results."""
    from hemaflow.pipeline import dag, steps
    from kfp import local

    config = resolve_source(config)
    steps.validate_request(config)
    out_path = Path(out).expanduser().resolve() if out else None
    root = Path(pipeline_root or (out_path / "kfp" if out_path else Path.cwd() / "hemaflow-runs"))
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=make_runner(runner, config),
        pipeline_root=str(root),
        enable_caching=caching and config.pipeline.caching,
        raise_on_error=True,
    )
    pipeline = dag.build_pipeline(config, target="kubeflow")
    with warnings.catch_warnings():
        # The project image has no "python" in its name; it is a Python image all the same.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        task = pipeline(**dag.parameters(config))
    outputs = task.outputs
    evaluation = Path(outputs["evaluation"].path)
    result = LocalRun(
        pipeline_root=root,
        model=Path(outputs["model"].path),
        evaluation=evaluation,
        report=Path(outputs["report"].path),
        metrics=json.loads((evaluation / "metrics.json").read_text()),
    )
    if out_path is not None:
        result.out = out_path
        result.copied = publish(result, out_path)
    return result


def publish(run: LocalRun, out: Path) -> dict[str, Path]:
    """Copy the ensemble Model folder, metrics.json and report.html into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with storage.artifact_dir(out / "model") as staging:
        shutil.copytree(run.model, staging, dirs_exist_ok=True)
        (staging / storage.COMPLETE_MARKER).unlink(missing_ok=True)
    storage.write_bytes_atomic(out / "metrics.json", (run.evaluation / "metrics.json").read_bytes())
    storage.write_bytes_atomic(out / "report.html", run.report.read_bytes())
    return {
        "model": out / "model",
        "metrics": out / "metrics.json",
        "report": out / "report.html",
    }
