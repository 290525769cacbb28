"""Stage 3, backbone comparison: a few epochs per candidate, then the top k by a criterion.

With pretrained weights only the head trains (the backbone stays frozen), which is what ranks
backbones by how well their features fit blood cells; without weights the whole network
trains from scratch. One backbone per call, so a pipeline runs candidates in parallel.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from hemaflow import storage
from hemaflow.config import Config
from hemaflow.errors import StageError
from hemaflow.reporting import plots

log = logging.getLogger("hemaflow.compare")

CRITERIA = ("val_accuracy", "bmk_accuracy", "mean_accuracy")
RESULT_KEYS = (
    "backbone",
    "val_accuracy",
    "bmk_accuracy",
    "params",
    "train_images_per_s",
    "infer_images_per_s",
    "precision",
)


def run(data_dir: str, backbone: str, out_dir: str, config: Config) -> dict:
    """Train ``backbone`` for ``compare.epochs`` on ``data_dir``; returns its scores and history."""
    from hemaflow.modeling import fitting, zoo
    from hemaflow.reporting.report import Report

    s = fitting.setup(data_dir, backbone, config, config.compare.train_images)
    hp = fitting.default_hparams(config)
    train_ds, val_ds, bmk_ds = fitting.data(s, config.seed)
    with s.strategy.scope():
        model = fitting.build(s, config, hp)
        zoo.set_trainable_layers(model, 0 if s.pretrained else -1)
    fitting.compile_phase(s, model, hp, config.compare.learning_rate, config.compare.epochs)
    with tempfile.TemporaryDirectory(prefix="hemaflow-compare-") as work:
        phase = fitting.run_phase(
            model, "compare", Path(work), train_ds, val_ds, config.compare.epochs, s.train_images
        )
    val_accuracy = fitting.evaluate_accuracy(model, val_ds)
    bmk_accuracy = fitting.evaluate_accuracy(model, bmk_ds) if bmk_ds is not None else None
    result: dict[str, Any] = {
        "backbone": backbone,
        "val_accuracy": val_accuracy,
        "bmk_accuracy": bmk_accuracy,
        "params": int(model.count_params()),
        "train_images_per_s": fitting.steady_rate(phase["rates"]),
        "infer_images_per_s": fitting.inference_rate(model, val_ds),
        "precision": s.policy,
        "epochs": config.compare.epochs,
        "image_size": s.info.image_size,
        "pretrained": s.pretrained,
        "history": phase["history"],
    }
    with storage.artifact_dir(out_dir) as staging:
        storage.write_text_atomic(staging / "metrics.json", json.dumps(result, indent=2))
        report = Report(f"Backbone comparison: {backbone}")
        report.table([{k: result[k] for k in RESULT_KEYS}])
        report.figure("curves.png", plots.curves_png(phase["history"], backbone), "training curves")
        report.write(staging)
    log.info("%s: val %.4f, bmk %s", backbone, val_accuracy, bmk_accuracy)
    return result


def score(result: dict, criterion: str) -> float:
    """A result's value under ``criterion`` (mean_accuracy falls back to val without Bmk)."""
    if criterion not in CRITERIA:
        raise StageError(f"criterion: {criterion!r} is not one of {', '.join(CRITERIA)}")
    val = result.get("val_accuracy")
    bmk = result.get("bmk_accuracy")
    if criterion == "val_accuracy":
        value = val
    elif criterion == "bmk_accuracy":
        value = bmk
    else:
        value = val if bmk is None else (val + bmk) / 2 if val is not None else None
    if value is None:
        raise StageError(f"{result.get('backbone', '?')}: no {criterion} in its results")
    return float(value)


def select_top_k(results: list[dict], k: int, criterion: str) -> list[str]:
    """The backbones of the ``k`` best results; ties go to the smaller, then the faster model."""
    if k < 1:
        raise StageError(f"k: must be at least 1, got {k}")
    names = [r.get("backbone") for r in results]
    if len(set(names)) != len(names):
        raise StageError(f"results: backbones appear more than once: {names}")
    if k > len(results):
        raise StageError(
            f"k={k}: only {len(results)} candidate backbone(s) to choose from ({', '.join(map(str, names))})"
        )
    ranked = sorted(
        results,
        key=lambda r: (-score(r, criterion), r.get("params", 0), -r.get("train_images_per_s", 0)),
    )
    return [r["backbone"] for r in ranked[:k]]
