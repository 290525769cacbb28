"""Stage 7, evaluate: clean test, Bmk and the corruption suite, with calibration and robustness.

Clean test and Bmk splits of a TFRecord folder are scored on Beam through tfx-bsl
RunInference (:mod:`hemaflow.modeling.inference`), the way they scale to large data. The corrupted
copies are generated on the fly in memory (``hemaflow.imaging.corruptions``) and scored in process
with the loaded Keras model; ``evaluate.max_images`` caps how many test images they use.
An ingest Dataset folder (or any in-memory labelled source) is scored in process throughout.

Optional test-time BatchNorm adaptation re-estimates every BatchNorm layer's statistics on
each corrupted set before predicting (weights untouched, restored afterwards); with
``evaluate.bn_adaptation`` on, both the plain and the adapted numbers are reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hemaflow import storage
from hemaflow.config import Config
from hemaflow.modeling import metrics
from hemaflow.modeling.inference import LabelledSplit
from hemaflow.progress import log, progress

MISTAKES_SHOWN = 24


class EvaluationError(ValueError):
    """Model and data do not fit together, or there is nothing to evaluate."""


# --------------------------------------------------------------------------- checks


def check_compatible(
    model_classes: list[str], model_size: int, any_size: bool, data: LabelledSplit, where: str
) -> None:
    """Class lists must match exactly (same order); the size must match unless resized inside."""
    if list(model_classes) != list(data.class_names):
        raise EvaluationError(
            f"{where}: class lists differ: the model has {list(model_classes)}, the data has "
            f"{list(data.class_names)}"
        )
    if not any_size and model_size and int(model_size) != int(data.image_size):
        raise EvaluationError(
            f"{where}: the data is {data.image_size} px but the model works at {model_size} px"
        )


# --------------------------------------------------------------------------- BN adaptation


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included."""
    import keras

    found, stack, seen = [], [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return found


def predict_bn_adapted(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Predict after re-estimating BatchNorm statistics on ``images`` (then restore them).

    Moving means and variances become the running average of the per-batch statistics of
    ``images`` (momentum (k-1)/k on batch k), which is test-time BN adaptation; frozen
    BatchNorm layers are adapted too. Without BatchNorm layers this is the plain prediction.
    """
    from hemaflow.modeling.inference import predict_arrays

    layers = batchnorm_layers(model)
    if not layers:
        return predict_arrays(model, images, batch_size)
    saved = [
        (layer, layer.momentum, layer.trainable, [w.numpy() for w in layer.non_trainable_weights])
        for layer in layers
    ]
    try:
        for layer in layers:
            layer.trainable = True  # a frozen BatchNorm ignores training=True
        for k, start in enumerate(range(0, len(images), batch_size), 1):
            for layer in layers:
                layer.momentum = (k - 1) / k
            model(images[start : start + batch_size], training=True)
        return predict_arrays(model, images, batch_size)  # reads the adapted variables
    finally:
        for layer, momentum, trainable, weights in saved:
            layer.momentum = momentum
            layer.trainable = trainable
            for variable, value in zip(layer.non_trainable_weights, weights, strict=True):
                variable.assign(value)


# --------------------------------------------------------------------------- scoring


def corruption_results(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    names: list[str],
    severities: list[int],
    batch_size: int,
    seed: int,
    bn_adaptation: bool = False,
) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """``{"plain"|"adapted": {corruption: {severity: metrics}}}`` over the corruption suite."""
    from hemaflow.imaging import corruptions
    from hemaflow.modeling.inference import predict_arrays

    modes = ["plain", "adapted"] if bn_adaptation else ["plain"]
    out: dict[str, dict[str, dict[int, dict[str, float]]]] = {m: {} for m in modes}
    jobs = [(n, s) for n in names for s in severities]
    for name, severity in progress(jobs, total=len(jobs), desc="corruptions"):
        corrupted = corruptions.corrupt(images, name, severity, seed)
        for mode in modes:
            probs = (
                predict_bn_adapted(model, corrupted, batch_size)
                if mode == "adapted"
                else predict_arrays(model, corrupted, batch_size)
            )
            scored = metrics.classification_metrics(probs, labels, class_names, False)
            out[mode].setdefault(name, {})[severity] = {
                k: scored[k] for k in ("accuracy", "balanced_accuracy", "ece", "log_loss")
            }
    return out


def _headline(scored: dict[str, Any]) -> dict[str, Any]:
    keep = ("count", "accuracy", "balanced_accuracy", "ece", "log_loss", "macro_f1")
    return {k: scored[k] for k in keep}


# --------------------------------------------------------------------------- report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability_png(table: dict[str, list[float]], title: str) -> bytes:
    from hemaflow.reporting.report import figure_png

    plt = _pyplot()
    edges = np.asarray(table["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    counts = np.asarray(table["count"])
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], "--", color="#999", label="perfect calibration")
    busy = counts > 0
    ax.bar(
        centers[busy],
        np.asarray(table["accuracy"])[busy],
        width=edges[1] - edges[0],
        alpha=0.7,
        edgecolor="#333",
        label="accuracy",
    )
    ax.plot(
        np.asarray(table["confidence"])[busy],
        np.asarray(table["accuracy"])[busy],
        "o",
        color="#C44E52",
        markersize=3,
        label="mean confidence",
    )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=10)
    return figure_png(fig)


def curves_png(history: dict[str, list[float]]) -> bytes:
    from hemaflow.reporting.report import figure_png

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for name, values in history.items():
            if isinstance(values, list) and name.endswith(key):
                ax.plot(range(1, len(values) + 1), values, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key, fontsize=10)
        ax.legend(fontsize=7)
    return figure_png(fig)


def severity_png(by_corruption: dict[str, dict[int, dict[str, float]]], clean: float) -> bytes:
    from hemaflow.reporting.report import figure_png

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, rows in by_corruption.items():
        sev = sorted(rows)
        ax.plot(sev, [rows[s]["accuracy"] for s in sev], marker="o", markersize=3, label=name)
    ax.axhline(clean, color="black", linestyle="--", linewidth=1, label="clean")
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy")
    ax.set_xticks(sorted({s for rows in by_corruption.values() for s in rows}))
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set_title("accuracy by severity", fontsize=10)
    return figure_png(fig)


def build_report(
    body: dict[str, Any],
    test: LabelledSplit,
    test_probs: np.ndarray,
    history: dict[str, list[float]] | None,
    synthetic: bool,
    corruption_names: list[str],
    seed: int,
):
    from hemaflow.imaging import corruptions
    from hemaflow.reporting import report

    page = report.Report(f"hemaflow evaluation: {body['model']['name']}", synthetic=synthetic)
    page.heading("Headline")
    page.table(
        [
            {"set": "test", **body["test"]},
            *([{"set": "bmk", **body["bmk"]}] if body.get("bmk") else []),
            *(
                [
                    {
                        "set": "corrupted (mean)",
                        "accuracy": body["corrupted_accuracy"],
                        "balanced_accuracy": body["corrupted_balanced_accuracy"],
                    }
                ]
                if body.get("robustness")
                else []
            ),
        ],
        ["set", "count", "accuracy", "balanced_accuracy", "macro_f1", "ece", "log_loss"],
    )
    page.paragraph(body["inference"])
    page.heading("Per class (test)")
    page.table([{"class": k, **v} for k, v in body["per_class"].items()])
    page.figure(
        "confusion_test.png",
        report.confusion_matrix_png(np.asarray(body["confusion_matrix"]), test.class_names, "test"),
    )
    if body.get("bmk"):
        page.figure(
            "confusion_bmk.png",
            report.confusion_matrix_png(
                np.asarray(body["bmk"]["confusion_matrix"]), test.class_names, "Bmk"
            ),
        )
    page.heading("Calibration")
    page.figure(
        "reliability_test.png",
        reliability_png(body["reliability"], "test reliability"),
        f"ECE (15 bins) {body['ece']:.4f}",
    )
    robustness = body.get("robustness")
    if robustness:
        page.heading("Robustness (MedMNIST-C style)")
        per = robustness["per_corruption"]
        page.figure(
            "corruption_accuracy.png",
            report.bar_chart(
                list(per),
                [r["accuracy"] for r in per.values()],
                "accuracy per corruption (mean over severities)",
                ylim=(0, 1.05),
            ),
        )
        page.figure(
            "corruption_balanced_error.png",
            report.bar_chart(
                list(per),
                [r["balanced_error"] for r in per.values()],
                "balanced error per corruption (mean over severities)",
            ),
        )
        by_corruption = {
            name: {int(s): v for s, v in row["by_severity"].items()} for name, row in per.items()
        }
        page.figure(
            "corruption_severity.png",
            severity_png(by_corruption, robustness["clean_accuracy_on_sample"]),
        )
        rows = [
            {
                "corruption": name,
                "accuracy": row["accuracy"],
                "balanced_error": row["balanced_error"],
                "relative_balanced_error": row["relative_balanced_error"],
                **(
                    {
                        "accuracy_bn_adapted": body["bn_adaptation"]["per_corruption"][name][
                            "accuracy"
                        ]
                    }
                    if body.get("bn_adaptation")
                    else {}
                ),
            }
            for name, row in per.items()
        ]
        page.table(rows)
        page.figure(
            "corruption_grid.png",
            corruptions.corruption_grid(test.images[0], corruption_names, seed=seed),
            f"the suite on test image {test.ids[0]}",
        )
    if history:
        page.heading("Training curves")
        page.figure("training_curves.png", curves_png(history))
    wrong = np.flatnonzero(test_probs.argmax(axis=1) != test.labels)[:MISTAKES_SHOWN]
    page.heading(f"Examples of mistakes ({len(wrong)} shown)")
    if len(wrong):
        names = test.class_names
        titles = [
            f"{names[test.labels[i]]}\n-> {names[test_probs[i].argmax()]} {test_probs[i].max():.2f}"
            for i in wrong
        ]
        page.figure("mistakes.png", report.image_grid(test.images[wrong], titles))
    else:
        page.paragraph("No mistakes on the test split.")
    return page


# --------------------------------------------------------------------------- stage


def evaluate_loaded(
    model,
    model_manifest: dict[str, Any],
    test: LabelledSplit,
    test_probs: np.ndarray,
    bmk: tuple[np.ndarray, np.ndarray] | None,
    out_dir: str,
    config: Config,
    inference_note: str,
    data_manifest: dict[str, Any] | None = None,
    history: dict[str, list[float]] | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Score a loaded model on in-memory test data (clean probabilities given) and publish."""
    from hemaflow.imaging import corruptions
    from hemaflow.modeling import inference
    from hemaflow.reporting import modelcard

    ev = config.evaluate
    class_names = test.class_names
    scored = metrics.classification_metrics(test_probs, test.labels, class_names)
    body: dict[str, Any] = {
        "model": {
            "name": model_manifest.get("backbone")
            or (
                "ensemble" if model_manifest.get("members") else model_manifest.get("name", "model")
            ),
            "path": model_manifest.get("path", ""),
            "image_size": model_manifest.get("image_size"),
        },
        "data": {"source": source, "kind": test.kind, "image_size": test.image_size},
        "class_names": class_names,
        **{k: scored[k] for k in ("accuracy", "balanced_accuracy", "ece", "log_loss", "macro_f1")},
        "per_class": scored["per_class"],
        "confusion_matrix": scored["confusion_matrix"],
        "reliability": scored["reliability"],
        "test": _headline(scored),
        "bmk": None,
        "bmk_accuracy": None,
        "bmk_balanced_accuracy": None,
        "inference": inference_note,
        "synthetic": bool((data_manifest or {}).get("synthetic", False)),
    }
    if bmk is not None:
        bmk_scored = metrics.classification_metrics(bmk[0], bmk[1], class_names, False)
        body["bmk"] = {**_headline(bmk_scored), "confusion_matrix": bmk_scored["confusion_matrix"]}
        body["bmk_accuracy"] = bmk_scored["accuracy"]
        body["bmk_balanced_accuracy"] = bmk_scored["balanced_accuracy"]

    names = corruptions.corruption_names(ev.corruptions)
    keep = inference.subsample(len(test), ev.max_images, config.seed)
    sample_images, sample_labels = test.images[keep], test.labels[keep]
    clean_sample_bacc = metrics.balanced_accuracy(
        sample_labels, test_probs[keep].argmax(axis=1), len(class_names)
    )
    log.info(
        "corruption suite: %d corruptions x %d severities on %d images",
        len(names),
        len(ev.severities),
        len(keep),
    )
    results = corruption_results(
        model,
        sample_images,
        sample_labels,
        class_names,
        names,
        list(ev.severities),
        ev.batch_size,
        config.seed,
        ev.bn_adaptation,
    )
    robustness = metrics.robustness_summary(clean_sample_bacc, results["plain"])
    robustness["clean_accuracy_on_sample"] = metrics.accuracy(
        sample_labels, test_probs[keep].argmax(axis=1)
    )
    body.update(
        {
            "corrupted_accuracy": robustness["corrupted_accuracy"],
            "corrupted_balanced_accuracy": robustness["corrupted_balanced_accuracy"],
            "mean_balanced_error": robustness["mean_balanced_error"],
            "mean_relative_balanced_error": robustness["mean_relative_balanced_error"],
            "per_corruption": {
                name: {k: row[k] for k in ("accuracy", "balanced_error", "relative_balanced_error")}
                for name, row in robustness["per_corruption"].items()
            },
            "robustness": robustness,
            "corruptions": names,
            "severities": list(ev.severities),
            "max_images": int(ev.max_images),
            "corruption_sample_count": int(len(keep)),
            "bn_adaptation": None,
        }
    )
    if ev.bn_adaptation:
        adapted = metrics.robustness_summary(clean_sample_bacc, results["adapted"])
        body["bn_adaptation"] = {
            "corrupted_accuracy": adapted["corrupted_accuracy"],
            "corrupted_balanced_accuracy": adapted["corrupted_balanced_accuracy"],
            "mean_balanced_error": adapted["mean_balanced_error"],
            "per_corruption": adapted["per_corruption"],
            "batchnorm_layers": len(batchnorm_layers(model)),
        }

    card_manifest = {
        **model_manifest,
        "class_names": class_names,
        "image_size": model_manifest.get("image_size", test.image_size),
    }
    with storage.artifact_dir(out_dir) as staging:
        storage.write_text_atomic(
            staging / "metrics.json", json.dumps(body, indent=2, sort_keys=True)
        )
        storage.write_text_atomic(
            staging / "confusion_matrices.json",
            json.dumps(
                {
                    "class_names": class_names,
                    "test": body["confusion_matrix"],
                    "bmk": body["bmk"]["confusion_matrix"] if body["bmk"] else None,
                },
                indent=2,
            ),
        )
        storage.write_text_atomic(
            staging / "model_card.md",
            modelcard.model_card(card_manifest, body, data_manifest or {}),
        )
        build_report(body, test, test_probs, history, body["synthetic"], names, config.seed).write(
            staging
        )
    log.info(
        "evaluate: accuracy %.4f, balanced %.4f, ECE %.4f, bmk %s, corrupted %.4f",
        body["accuracy"],
        body["balanced_accuracy"],
        body["ece"],
        body["bmk_accuracy"],
        body["corrupted_accuracy"],
    )
    return {
        k: body[k]
        for k in (
            "accuracy",
            "balanced_accuracy",
            "ece",
            "log_loss",
            "macro_f1",
            "bmk_accuracy",
            "bmk_balanced_accuracy",
            "corrupted_accuracy",
            "corrupted_balanced_accuracy",
            "mean_balanced_error",
            "mean_relative_balanced_error",
        )
    } | {"bn_adapted_corrupted_accuracy": (body["bn_adaptation"] or {}).get("corrupted_accuracy")}


def load_for_evaluation(model_dir: str) -> tuple[Any, dict[str, Any], dict | None]:
    """The loaded model, its manifest (or one derived from the model) and its history."""
    from hemaflow.modeling import loading
    from hemaflow.modeling.export import HISTORY

    model = loading.load_model(model_dir)
    try:
        manifest = loading.read_model_manifest(model_dir)
    except loading.ModelError:
        classes, size = loading.model_class_names(model_dir, model)
        manifest = {"class_names": classes, "image_size": size, "name": Path(str(model_dir)).stem}
    manifest = {**manifest, "path": str(model_dir)}
    history = None
    history_uri = storage.join(model_dir, HISTORY)
    if storage.exists(history_uri):
        history = json.loads(storage.read_text(history_uri))
    return model, manifest, history


def _align(predictions, split: LabelledSplit, what: str) -> np.ndarray:
    """Beam predictions (sorted by id) reordered to ``split``'s order, checked label by label."""
    index = {source_id: i for i, source_id in enumerate(predictions.ids)}
    if len(index) != len(predictions) or len(index) != len(split):
        raise EvaluationError(
            f"{what}: {len(predictions)} predictions for {len(split)} images; source ids must "
            "be unique"
        )
    try:
        order = np.array([index[i] for i in split.ids])
    except KeyError as exc:
        raise EvaluationError(f"{what}: no prediction for example {exc}") from exc
    if not np.array_equal(predictions.labels[order], split.labels):
        raise EvaluationError(f"{what}: labels of the Beam predictions do not match the data")
    return predictions.probs[order]


def evaluate(model_dir: str, data_dir: str, out_dir: str, config: Config) -> dict[str, Any]:
    """Evaluate a Model folder on a TFRecord folder or Dataset folder (its test split)."""
    from hemaflow.data import dataset
    from hemaflow.modeling import inference

    model, manifest, history = load_for_evaluation(model_dir)
    source, data_dir = str(data_dir), inference.readable(data_dir)
    test = inference.read_split(data_dir, "test")
    check_compatible(
        manifest["class_names"],
        manifest["image_size"],
        bool(manifest.get("accepts_any_size")),
        test,
        f"{model_dir} on {source}",
    )
    has_saved_model = storage.exists(storage.join(model_dir, "saved_model", "saved_model.pb"))
    aug = config.augment
    bmk = None
    if test.kind == "tfrecords" and has_saved_model:
        preds = inference.predict_tfrecords(
            model_dir, data_dir, "test", None, aug.runner, aug.runner_options
        )
        test_probs = _align(preds, test, f"{source} test")
        if tf_has_split(data_dir, "bmk"):
            bmk_preds = inference.predict_tfrecords(
                model_dir, data_dir, "bmk", None, aug.runner, aug.runner_options
            )
            bmk = (bmk_preds.probs, bmk_preds.labels)
        note = (
            f"Clean test and Bmk scored on Beam ({aug.runner}) with tfx-bsl RunInference over "
            "the SavedModel's serve_examples signature; corrupted copies generated in memory "
            "and scored in process."
        )
    else:
        test_probs = inference.predict_arrays(model, test.images, config.evaluate.batch_size)
        if test.kind == "tfrecords":
            bmk_split = (
                inference.read_split(data_dir, "bmk") if tf_has_split(data_dir, "bmk") else None
            )
            if bmk_split is not None:
                bmk = (
                    inference.predict_arrays(model, bmk_split.images, config.evaluate.batch_size),
                    bmk_split.labels,
                )
        note = "All sets scored in process with the Keras model (no SavedModel or no TFRecords)."
    return evaluate_loaded(
        model,
        manifest,
        test,
        test_probs,
        bmk,
        out_dir,
        config,
        note,
        data_manifest=dataset.read_manifest(data_dir),
        history=history,
        source=source,
    )


def tf_has_split(data_dir: str, split: str) -> bool:
    import tensorflow as tf

    from hemaflow.data import tfrecords

    return bool(tf.io.gfile.glob(tfrecords.shard_pattern(data_dir, split)))


def evaluate_arrays(
    model_dir: str,
    images: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    class_names: list[str],
    out_dir: str,
    config: Config,
    source: str,
    synthetic: bool = False,
) -> dict[str, Any]:
    """Evaluate on an in-memory labelled source (raw folders, .npz, labels.csv)."""
    from hemaflow.modeling import inference

    model, manifest, history = load_for_evaluation(model_dir)
    if len(labels) == 0:
        raise EvaluationError(f"{source}: no labelled images to evaluate")
    split = LabelledSplit(
        np.asarray(images, np.uint8),
        np.asarray(labels, np.int64),
        np.asarray(ids).astype(str),
        list(class_names),
        int(images.shape[1]),
        "source",
        {"synthetic": synthetic},
    )
    check_compatible(
        manifest["class_names"],
        manifest["image_size"],
        bool(manifest.get("accepts_any_size")),
        split,
        f"{model_dir} on {source}",
    )
    probs = inference.predict_arrays(model, split.images, config.evaluate.batch_size)
    return evaluate_loaded(
        model,
        manifest,
        split,
        probs,
        None,
        out_dir,
        config,
        "All images scored in process with the Keras model.",
        data_manifest={"synthetic": synthetic, "source": source},
        history=history,
        source=source,
    )
