"""Stage 3, backbone comparison: a few epochs per candidate, then the top k by a criterion.

Candidates are scored on val and on Bmk-val (val through ``augment.bmk_policy``) only: the
test split and Bmk never steer the ranking, so evaluate's figures on them stay out of sample.

With pretrained weights only the head trains (the backbone stays frozen), which is what ranks
backbones by how well their features fit blood cells; without weights the whole network
trains from scratch. One backbone per call, so a pipeline runs candidates in parallel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hemaflow import storage
from hemaflow.config import Config, Criterion
from hemaflow.errors import StageError
from hemaflow.reporting import plots

log = logging.getLogger("hemaflow.compare")

CRITERIA: tuple[str, ...] = typing.get_args(Criterion)
RESULT_KEYS = (
    "backbone",
    "val_accuracy",
    "bmk_val_accuracy",
    "params",
    "train_images_per_s",
    "infer_images_per_s",
    "precision",
)


def run(data_dir: str, backbone: str, out_dir: str, config: Config) -> dict:
    """Train ``backbone`` for ``compare.epochs`` on ``data_dir``; returns its scores and history."""
    from hemaflow.modeling import fitting, zoo
    from hemaflow.reporting.report import Report

    storage.check_output(out_dir, inputs=[data_dir])
    start = time.perf_counter()
    s = fitting.setup(data_dir, backbone, config, config.compare.train_images)
    hp = fitting.default_hparams(config)
    train_ds, val_ds, bmk_val_ds = fitting.data(s, config.seed)
    with s.strategy.scope():
        model = fitting.build(s, config, hp)
        zoo.set_trainable_layers(model, 0 if s.pretrained else -1)
    fitting.compile_phase(s, model, hp, config.compare.learning_rate, config.compare.epochs)
    # A comparison starts afresh (no resume), so earlier event files would only mix in.
    logs = fitting.default_work_dir(out_dir) / fitting.TENSORBOARD_DIR
    shutil.rmtree(logs, ignore_errors=True)
    # Without train.checkpoint_dir a comparison starts afresh; with it (what pipeline tasks
    # get) a restarted task resumes its fit from the last epoch saved there.
    ckpt = config.train.checkpoint_dir
    store = fitting.checkpoint_store(out_dir, ckpt) if ckpt else None
    scratch = tempfile.TemporaryDirectory(prefix="hemaflow-compare-")
    with contextlib.nullcontext(str(store.local)) if store else scratch as work:
        phase = fitting.run_phase(
            model,
            "compare",
            Path(work),
            train_ds,
            val_ds,
            config.compare.epochs,
            s.train_images,
            tensorboard=fitting.tensorboard(s, logs / "compare", config.seed),
            store=store,
        )
    scratch.cleanup()
    val_accuracy = fitting.evaluate_accuracy(model, val_ds)
    bmk_val = fitting.evaluate_accuracy(model, bmk_val_ds) if bmk_val_ds is not None else None
    infer_rate = fitting.inference_rate(model, val_ds)
    result: dict[str, Any] = {
        "backbone": backbone,
        "val_accuracy": val_accuracy,
        "bmk_val_accuracy": bmk_val,
        "params": int(model.count_params()),
        "train_images_per_s": fitting.steady_rate(phase["rates"]),
        "infer_images_per_s": infer_rate,
        "precision": s.policy,
        # What a time-limited run plans with (hemaflow.planning): this machine's costs.
        **epoch_timing(
            phase["rates"],
            s.train_images,
            time.perf_counter() - start,
            phase.get("steady_seconds", []),
        ),
        "epochs": config.compare.epochs,
        "image_size": s.info.image_size,
        "pretrained": s.pretrained,
        "history": phase["history"],
    }
    with storage.artifact_dir(out_dir) as staging:
        storage.write_text_atomic(staging / "metrics.json", json.dumps(result, indent=2))
        report = Report(f"Backbone comparison: {backbone}")
        report.table([{k: result[k] for k in RESULT_KEYS}])
        report.paragraph(
            "val_accuracy: the val split; bmk_val_accuracy: val through the Bmk policy "
            "(empty for a TFRecord folder without a bmk_val split). The test split and Bmk "
            "are not used here; evaluate reports on them."
        )
        report.figure("curves.png", plots.curves_png(phase["history"], backbone), "training curves")
        report.write(staging)
        fitting.publish_tensorboard(logs, staging)
    shutil.rmtree(logs.parent, ignore_errors=True)
    if store is not None:
        store.remove()
    log.info("%s: val %.4f, bmk_val %s", backbone, val_accuracy, bmk_val)
    return result


def epoch_timing(
    rates: list[float],
    train_images: int,
    wall_seconds: float,
    steady_seconds: Sequence[float] = (),
) -> dict[str, float]:
    """Epoch seconds (steady and first), images per epoch and the time outside the epochs.

    The planner scales them to train's epochs; a task's time outside its epochs (building,
    scoring, export) is charged to every member. A steady epoch is the mean of the epochs
    after the first; a one-epoch comparison has none, and then its first epoch with the
    first steps (graph tracing) at the pace of the rest stands in (``steady_seconds``).
    """
    seconds = [train_images / r for r in rates if r > 0]
    steady = seconds[1:] or [t for t in steady_seconds[:1] if t > 0] or seconds
    return {
        "train_images": train_images,
        "epoch_seconds": sum(steady) / len(steady) if steady else 0.0,
        "first_epoch_seconds": seconds[0] if seconds else 0.0,
        "wall_seconds": wall_seconds,
        "overhead_seconds": max(wall_seconds - sum(seconds), 0.0),
    }


def score(result: dict, criterion: str) -> float:
    """A result's value under ``criterion``; without Bmk-val every criterion is val accuracy."""
    if criterion not in CRITERIA:
        raise StageError(f"criterion: {criterion!r} is not one of {', '.join(CRITERIA)}")
    val = result.get("val_accuracy")
    if val is None:
        raise StageError(f"{result.get('backbone', '?')}: no val_accuracy in its results")
    bmk_val = result.get("bmk_val_accuracy")
    if bmk_val is None or criterion == "val_accuracy":
        return float(val)
    return float(bmk_val if criterion == "bmk_val_accuracy" else (val + bmk_val) / 2)


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
    missing = [
        str(n) for r, n in zip(results, names, strict=True) if r.get("bmk_val_accuracy") is None
    ]
    if criterion in CRITERIA and criterion != "val_accuracy" and missing:
        # One yardstick for every candidate: a mix of val and val+Bmk-val scores would not rank.
        log.warning(
            "criterion %s: no bmk_val_accuracy for %s (TFRecord folder without a bmk_val "
            "split); ranking every backbone on val_accuracy",
            criterion,
            ", ".join(missing),
        )
        criterion = "val_accuracy"
    ranked = sorted(
        results,
        key=lambda r: (-score(r, criterion), r.get("params", 0), -r.get("train_images_per_s", 0)),
    )
    return [r["backbone"] for r in ranked[:k]]
