"""Stage 6, ensemble: weighted probability averaging fitted on val, then temperature scaling.

Members are loaded with safe_mode and scored once on the val split. Member weights are
``softmax(theta)`` with ``theta`` fitted to minimise val log-loss (started from uniform and
from each member, and never worse than the best member alone); a temperature is then fitted to
minimise val NLL. The exported model holds the members, a :class:`WeightedAverage` and a
``TemperatureScaling`` layer; it takes raw uint8 images of any size (resized to the
working size by :class:`ResizeImages`) and returns calibrated probabilities. With
``ensemble.views`` > 1 each member also sees flipped and transposed copies of every image
(:func:`dihedral_view`), averaged before the weights and the temperature are fitted, so the
exported model is the one that was fitted.

The Keras layers live in :mod:`hemaflow.modeling.layers`, so any model loads without this stage.
Weights and temperature are fitted and reported on the same val split, so the reported
ensemble val numbers are in-sample; evaluate on test for an honest estimate.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hemaflow import storage
from hemaflow.config import Config
from hemaflow.data import labelled
from hemaflow.errors import StageError
from hemaflow.modeling import metrics
from hemaflow.modeling.layers import EPS, dihedral_view, register_layers
from hemaflow.reporting import plots

log = logging.getLogger("hemaflow.ensemble")

T_BOUNDS = (0.05, 20.0)


# --------------------------------------------------------------------------- fitting (pure)


def predict_views(model, images: np.ndarray, views: int, batch_size: int) -> np.ndarray:
    """``model``'s probabilities for ``images`` averaged over the first ``views`` views."""
    from hemaflow.modeling.inference import predict_arrays

    probs = [predict_arrays(model, dihedral_view(images, v), batch_size) for v in range(views)]
    return np.mean(probs, axis=0, dtype=np.float64)


def combine(member_probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted average of ``member_probs`` [M, N, C] with ``weights`` [M]."""
    return np.tensordot(np.asarray(weights, np.float64), member_probs, axes=1)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """What :class:`TemperatureScaling` computes, in numpy (float64)."""
    logits = np.log(np.clip(probs, EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def _softmax(theta: np.ndarray) -> np.ndarray:
    z = np.exp(theta - theta.max())
    return z / z.sum()


def fit_weights(member_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Simplex weights minimising the log-loss of the averaged probabilities.

    Optimises softmax-parameterised weights from several starts (uniform and each member) and
    keeps the best candidate, the members alone included, so the result is never worse than
    the best single member on the fitting data.
    """
    from scipy.optimize import minimize

    member_probs = np.asarray(member_probs, np.float64)
    count = member_probs.shape[0]
    if count == 1:
        return np.ones(1)

    def loss(weights: np.ndarray) -> float:
        return metrics.log_loss(combine(member_probs, weights), labels)

    candidates = [np.eye(count)[m] for m in range(count)]
    starts = [np.zeros(count)] + [np.eye(count)[m] * 2.0 for m in range(count)]
    for start in starts:
        result = minimize(lambda t: loss(_softmax(t)), start, method="L-BFGS-B")
        candidates.append(_softmax(result.x))
    return min(candidates, key=loss)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising NLL (1.0 kept unless another is strictly better).

    When val has no mistake, NLL keeps falling as the temperature goes to 0, so the fit
    would land on the lower bound and sharpen every later prediction towards one-hot:
    val then says nothing about how far to sharpen, and 1.0 is kept.
    """
    if np.array_equal(probs.argmax(axis=1), labels):
        return 1.0
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        return metrics.log_loss(apply_temperature(probs, float(np.exp(log_t))), labels)

    result = minimize_scalar(nll, bounds=tuple(np.log(T_BOUNDS)), method="bounded")
    best = float(np.exp(result.x))
    return best if nll(result.x) < nll(0.0) else 1.0


def score(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The per-model numbers the ensemble report compares."""
    pred = probs.argmax(axis=1)
    return {
        "val_accuracy": metrics.accuracy(labels, pred),
        "val_balanced_accuracy": metrics.balanced_accuracy(labels, pred, probs.shape[1]),
        "val_log_loss": metrics.log_loss(probs, labels),
        "val_ece": metrics.expected_calibration_error(probs, labels),
    }


# --------------------------------------------------------------------------- model


def build_ensemble_model(
    members: list, image_size: int, weights: list[float], temperature: float, views: int = 1
):
    """One Keras model: any-size uint8 -> resize -> members on ``views`` dihedral views
    (averaged) -> weighted mean -> temperature."""
    import keras

    layers = register_layers()
    inputs = keras.Input((None, None, 3), dtype="uint8", name="images")
    resized = layers["ResizeImages"](image_size, name="resize", dtype="float32")(inputs)
    viewed = [resized] + [
        layers["DihedralView"](v, name=f"view_{v}", dtype="float32")(resized)
        for v in range(1, views)
    ]
    outputs = []
    for i, member in enumerate(members):
        member.name = f"member_{i}_{member.name}"
        per_view = [member(x) for x in viewed]
        outputs.append(
            keras.layers.Average(name=f"member_{i}_views")(per_view) if views > 1 else per_view[0]
        )
    mixed = layers["WeightedAverage"](weights, name="weighted_average", dtype="float32")(outputs)
    calibrated = layers["TemperatureScaling"](temperature, name="temperature", dtype="float32")(
        mixed
    )
    return keras.Model(inputs, calibrated, name="hemaflow_ensemble")


def _check_members(manifests: list[dict], member_dirs: list[str], class_names, size) -> None:
    for path, manifest in zip(member_dirs, manifests, strict=True):
        if list(manifest["class_names"]) != list(class_names):
            raise StageError(
                f"{path}: member classes {manifest['class_names']} differ from the data's "
                f"{list(class_names)}"
            )
        if int(manifest["image_size"]) != int(size):
            raise StageError(
                f"{path}: member works at {manifest['image_size']} px but the data is {size} px"
            )


def finished_members(member_dirs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The members that trained at least one whole epoch, and those left out with why.

    A time-limited member whose deadline came before its first epoch ended (train's
    metrics.json: ``completed_epochs`` 0) holds untrained weights that would only dilute the
    ensemble. Members without that record (trained without a plan) are kept.
    """
    kept, left_out = [], []
    for path in member_dirs:
        record = storage.join(path, "metrics.json")
        trained = json.loads(storage.read_text(record)) if storage.exists(record) else {}
        if trained.get("stopped_by_deadline") and not trained.get("completed_epochs"):
            left_out.append((path, "its deadline came before it finished one epoch"))
        else:
            kept.append(path)
    return kept, left_out


def run(data_dir: str, member_dirs: list[str], out_dir: str, config: Config) -> dict[str, Any]:
    """Fit weights and temperature on val, export the ensemble Model folder to ``out_dir``."""
    from hemaflow.modeling import export, inference, loading
    from hemaflow.reporting import report

    storage.check_output(out_dir, inputs=[data_dir, *member_dirs])
    if not member_dirs:
        raise StageError("ensemble: name at least one member model folder")
    member_dirs, left_out = finished_members(member_dirs)
    for path, reason in left_out:
        log.warning("left out %s: %s", path, reason)
    if not member_dirs:
        raise StageError(
            "ensemble: no member finished an epoch before its deadline; give the run a "
            "longer --time-limit"
        )
    val = labelled.read_split(data_dir, "val")
    manifests = [loading.read_model_manifest(p) for p in member_dirs]
    _check_members(manifests, member_dirs, val.class_names, val.image_size)
    members = [loading.load_model(p) for p in member_dirs]

    batch, views = config.evaluate.batch_size, config.ensemble.views
    member_probs = np.stack([predict_views(m, val.images, views, batch) for m in members])
    labels = val.labels
    count = len(members)
    weights = fit_weights(member_probs, labels) if config.ensemble.fit_weights else None
    weights = np.full(count, 1.0 / count) if weights is None else weights
    mixed = combine(member_probs, weights)
    temperature = fit_temperature(mixed, labels) if config.ensemble.calibrate else 1.0
    calibrated = apply_temperature(mixed, temperature)

    rows = []
    for i, (path, manifest) in enumerate(zip(member_dirs, manifests, strict=True)):
        name = manifest.get("backbone") or Path(str(path).rstrip("/")).name
        rows.append(
            {
                "model": f"{name} ({views} views)" if views > 1 else name,
                "path": str(path),
                "weight": float(weights[i]),
                **score(member_probs[i], labels),
            }
        )
    uncalibrated = {"model": "ensemble (before temperature)", "weight": 1.0, **score(mixed, labels)}
    final = {
        "model": "ensemble",
        "weight": 1.0,
        "temperature": temperature,
        **score(calibrated, labels),
    }
    log.info(
        "ensemble of %d: weights %s, temperature %.3f, val log-loss %.4f (best member %.4f)",
        count,
        np.round(weights, 3).tolist(),
        temperature,
        final["val_log_loss"],
        min(r["val_log_loss"] for r in rows),
    )

    model = build_ensemble_model(members, val.image_size, weights.tolist(), temperature, views)
    check = inference.predict_arrays(model, val.images[:8], batch)
    if not np.allclose(check, calibrated[:8], atol=1e-3):
        raise RuntimeError("ensemble: the built model disagrees with the fitted combination")

    synthetic = bool(val.manifest.get("synthetic", False))
    summary = {
        "val_accuracy": final["val_accuracy"],
        "val_log_loss": final["val_log_loss"],
        "val_ece": final["val_ece"],
        "best_member_val_log_loss": min(r["val_log_loss"] for r in rows),
        "uncalibrated_val_log_loss": uncalibrated["val_log_loss"],
        "members": rows,
        "ensemble_before_temperature": uncalibrated,
        "ensemble": final,
        "weights": weights.tolist(),
        "temperature": temperature,
        "views": views,
        "fit_weights": config.ensemble.fit_weights,
        "calibrate": config.ensemble.calibrate,
        "val_count": len(labels),
        "data_dir": str(data_dir),
        "note": "weights and temperature are fitted on val; these val numbers are in-sample",
        "left_out": [{"path": str(p), "reason": r} for p, r in left_out],
    }
    with storage.artifact_dir(out_dir) as staging:
        export.export_model(
            model,
            staging,
            val.class_names,
            val.image_size,
            {
                "members": [
                    {"path": str(p), "backbone": m.get("backbone"), "weight": float(w)}
                    for p, m, w in zip(member_dirs, manifests, weights, strict=True)
                ],
                "temperature": temperature,
                "views": views,
                "precision": "float32",
                "accepts_any_size": True,
                "synthetic": synthetic,
                "metrics": {k: v for k, v in final.items() if k.startswith("val_")},
            },
        )
        storage.write_text_atomic(staging / "metrics.json", json.dumps(summary, indent=2))
        page = report.Report("hemaflow ensemble", synthetic=synthetic)
        page.heading("Members and ensemble on val")
        page.table(
            [*rows, uncalibrated, final],
            ["model", "weight", "val_accuracy", "val_balanced_accuracy", "val_log_loss", "val_ece"],
        )
        page.paragraph(
            f"Weights fitted on val to minimise log-loss ({'on' if config.ensemble.fit_weights else 'off: uniform'}); "
            f"temperature {temperature:.3f} fitted on val ({'on' if config.ensemble.calibrate else 'off'}). "
            "Val numbers of the ensemble are in-sample; the test split and Bmk are not used "
            "here (evaluate reports on them)."
        )
        if left_out:
            page.heading("Members left out")
            page.table([{"path": str(p), "reason": r} for p, r in left_out], ["path", "reason"])
        page.figure(
            "ensemble_log_loss.png",
            plots.bar_chart(
                [r["model"] for r in rows] + ["ensemble"],
                [r["val_log_loss"] for r in rows] + [final["val_log_loss"]],
                "val log-loss (lower is better)",
            ),
        )
        page.write(staging)
    return summary
