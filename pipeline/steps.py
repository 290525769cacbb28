"""What every pipeline task does around its stage function: config, artifact paths, outputs.

The KFP component wrappers in :mod:`pipeline.components` are one call into this module, so
the glue between KFP artifacts and the plain stage functions of :mod:`components` is written
once, is importable without KFP and is tested like any other code. Nothing here does a
stage's work. Artifacts are passed duck-typed (anything with ``uri``, ``path`` and
``metadata``), which is what ``kfp.dsl`` artifacts are inside a running task.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Protocol

from hemaflow import config as cfg
from hemaflow import storage


class ArtifactLike(Protocol):
    uri: str
    path: str
    metadata: dict[str, Any]


#: Pipeline parameters and the config keys they override (None: leave the profile's value).
PARAMETER_KEYS: dict[str, str] = {
    "source": "data.source",
    "backbones": "model.backbones",
    "k": "compare.top_k",
    "epochs": "train.epochs",
    "trials": "tune.max_trials",
    "seed": "seed",
    "weights": "model.weights",
}


def merge_overrides(overrides: str | dict[str, Any] | None, **parameters: Any) -> dict[str, Any]:
    """Pipeline parameters layered over a JSON overrides mapping (dotted keys).

    A parameter left at None, or ``epochs``/``trials`` at 0, keeps the profile's value.
    """
    if isinstance(overrides, str):
        try:
            base = json.loads(overrides or "{}")
        except json.JSONDecodeError as exc:
            raise cfg.ConfigError(f"overrides: not valid JSON: {exc}") from exc
    else:
        base = dict(overrides or {})
    if not isinstance(base, dict):
        raise cfg.ConfigError("overrides: must be a JSON object of config keys to values")
    merged = dict(base)
    for name, value in parameters.items():
        if name not in PARAMETER_KEYS:
            raise cfg.ConfigError(f"{name}: not a pipeline parameter ({', '.join(PARAMETER_KEYS)})")
        if value is None or (name in ("epochs", "trials") and value == 0):
            continue
        merged[PARAMETER_KEYS[name]] = list(value) if name == "backbones" else value
    return merged


def validate_request(config: cfg.Config, backbones: list[str], k: int) -> None:
    """Refuse what would only fail later in the run: unknown backbones, k out of range."""
    if not backbones:
        raise cfg.ConfigError("backbones: name at least one candidate backbone")
    duplicates = sorted({b for b in backbones if backbones.count(b) > 1})
    if duplicates:
        raise cfg.ConfigError(f"backbones: listed more than once: {', '.join(duplicates)}")
    if not 1 <= k <= len(backbones):
        raise cfg.ConfigError(
            f"k: cannot select the top {k} of {len(backbones)} candidate backbone(s) "
            f"({', '.join(backbones)}); choose 1 <= k <= {len(backbones)}"
        )
    from hemaflow.modeling.zoo import known_backbones

    known = list(known_backbones())
    unknown = [b for b in backbones if b not in known]
    if unknown:
        raise cfg.ConfigError(
            f"backbones: unknown backbone(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(known)}"
        )


def configure(profile: str, overrides: str, **parameters: Any) -> str:
    """The validated overrides every later task loads, as canonical JSON (fails fast)."""
    merged = merge_overrides(overrides, **parameters)
    config = cfg.load_config(profile=profile, overrides=merged)
    validate_request(config, list(config.model.backbones), config.compare.top_k)
    return json.dumps(merged, sort_keys=True)


def load(profile: str, overrides: str) -> cfg.Config:
    """The config of one task: its profile plus the JSON overrides from ``configure``."""
    return cfg.load_config(profile=profile, overrides=merge_overrides(overrides))


def location(artifact: ArtifactLike) -> str:
    """Where a stage reads or writes an artifact: the local path KFP gives the task.

    Not the gs:// URI, even on a cluster: Kubeflow's launcher downloads inputs to that path
    and uploads outputs from it after the task (a missing local output fails the task), and
    on Vertex the path is a Cloud Storage FUSE mount of the URI. Locally the two coincide.
    """
    return artifact.path


def copy_file(folder: str, name: str, artifact: ArtifactLike) -> None:
    """Copy ``folder/name`` (local or gs://) to a single-file output artifact."""
    source = storage.local_path(storage.join(folder, name))
    target = Path(artifact.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def scalar_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a stage's result, for a KFP Metrics artifact."""
    out = {}
    for key, value in sorted(result.items()):
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def log_metrics(artifact: Any, result: dict[str, Any]) -> None:
    """Log a result's scalars on a Metrics artifact and write them to its file as JSON.

    KFP reads metrics from the metadata; the file makes the artifact exist on disk, which
    kfp.local's cache requires before it reuses a task's outputs.
    """
    scalars = scalar_metrics(result)
    for key, value in scalars.items():
        artifact.log_metric(key, value)
    write_json(artifact, scalars)


def write_json(artifact: ArtifactLike, value: Any) -> None:
    target = Path(artifact.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    storage.write_text_atomic(target, json.dumps(value, indent=1, sort_keys=True))


def json_safe(result: dict[str, Any]) -> dict[str, Any]:
    """A stage result as plain JSON (numpy scalars and paths turned into str/float)."""
    return json.loads(json.dumps(result, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def confusion_matrix(eval_dir: str, artifact: Any) -> bool:
    """Fill a ClassificationMetrics artifact from the evaluation's ``metrics.json``.

    Looks for a confusion matrix (rows = true class) under ``confusion_matrix`` or
    ``test.confusion_matrix``; returns whether one was found.
    """
    metrics = json.loads(storage.read_text(storage.join(eval_dir, "metrics.json")))
    matrix = metrics.get("confusion_matrix")
    if matrix is None and isinstance(metrics.get("test"), dict):
        matrix = metrics["test"].get("confusion_matrix")
    names = metrics.get("class_names") or list(cfg.CLASS_NAMES)
    if not matrix:
        write_json(artifact, {})
        return False
    if len(matrix) != len(names) or any(len(row) != len(names) for row in matrix):
        raise ValueError(
            f"{eval_dir}/metrics.json: confusion_matrix is not {len(names)}x{len(names)}"
        )
    counts = [[int(v) for v in row] for row in matrix]
    artifact.log_confusion_matrix(list(names), counts)
    write_json(artifact, {"class_names": list(names), "confusion_matrix": counts})
    return True


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of an evaluation (the top-level scalars of its metrics.json)."""
    return scalar_metrics(metrics)


def config_overrides(config: cfg.Config) -> dict[str, Any]:
    """The dotted keys where ``config`` differs from its own profile, so that profile +
    overrides rebuilds it inside every task (covers --config files and --set alike)."""
    base = cfg.load_config(profile=config.profile).to_dict()
    return dict(sorted(_diff(base, config.to_dict(), "").items()))


def _diff(base: dict[str, Any], new: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in new.items():
        old = base.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value and old:
            out.update(_diff(old, value, f"{prefix}{key}."))
        elif value != old:
            out[f"{prefix}{key}"] = value
    return out
