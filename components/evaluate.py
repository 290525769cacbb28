"""Stage 7, evaluate: clean test, Bmk and the corruption suite, with calibration and robustness.

The model is a Model folder (train or ensemble output) or a bare ``.keras`` file (class names
from a manifest.json beside it, else ``class_0``...). Clean test and Bmk splits of a TFRecord
folder are scored on Beam through tfx-bsl RunInference (:mod:`hemaflow.modeling.inference`), the
way they scale to large data. The corrupted copies are generated on the fly in memory
(``hemaflow.imaging.corruptions``) and scored in process with the loaded Keras model;
``evaluate.max_images`` caps how many test images they use. The same sample is also scored
under the independent benchmark (``hemaflow.imaging.independent``, albumentations, which no
training code uses), because the own suite shares its ops with training augmentation and so
reads optimistic; ``evaluate.independent: []`` turns it off. An ingest Dataset folder, or a raw
labelled source (class folders, a folder with labels.csv, an .npz), is scored in process
throughout; a raw source's labels are mapped onto the model's classes by name.

Output folder: metrics.json (every number, confusion matrices included), report.html with its
figures, and model_card.md.

Optional test-time BatchNorm adaptation re-estimates every BatchNorm layer's statistics on
each corrupted set before predicting (weights untouched, restored afterwards); with
``evaluate.bn_adaptation`` on, both the plain and the adapted numbers are reported.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hemaflow import storage
from hemaflow.config import Config
from hemaflow.data import labelled
from hemaflow.data.labelled import LabelledSplit
from hemaflow.data.tfrecords import has_split
from hemaflow.errors import StageError
from hemaflow.modeling import metrics
from hemaflow.progress import progress
from hemaflow.reporting import plots
from hemaflow.reporting.plots import curves_png

log = logging.getLogger("hemaflow.evaluate")

MISTAKES_SHOWN = 24

CorruptFn = Callable[[np.ndarray, str, int, int], np.ndarray]
"""``corrupt(images, name, severity, seed)``: uint8 [B, H, W, 3] in, same shape out."""


# --------------------------------------------------------------------------- checks


def check_compatible(manifest: dict[str, Any], data: LabelledSplit, source: str) -> None:
    """Class lists must match exactly (same order); the size must match unless resized inside."""
    where = f"{manifest['path']} on {source}"
    if list(manifest["class_names"]) != list(data.class_names):
        raise StageError(
            f"{where}: class lists differ: the model has {list(manifest['class_names'])}, the "
            f"data has {list(data.class_names)}"
        )
    size = manifest["image_size"]
    if not manifest.get("accepts_any_size") and size and int(size) != int(data.image_size):
        raise StageError(
            f"{where}: the data is {data.image_size} px but the model works at {size} px"
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

    Moving means and variances become the plain average of the statistics of every call of
    each layer on ``images`` (momentum (n-1)/n on its n-th call), which is test-time BN
    adaptation. Counting calls, not batches, keeps the average even where a layer runs more
    than once per batch: an ensemble with test-time views calls each member once per view,
    and a per-batch momentum would then weigh the last batches most. Frozen BatchNorm layers
    are adapted too. Without BatchNorm layers this is the plain prediction.
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
            layer.call = _averaging_call(layer, layer.call)
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size], training=True)
        return predict_arrays(model, images, batch_size)  # reads the adapted variables
    finally:
        for layer, momentum, trainable, weights in saved:
            layer.__dict__.pop("call", None)  # back to the class's call
            layer.momentum = momentum
            layer.trainable = trainable
            for variable, value in zip(layer.non_trainable_weights, weights, strict=True):
                variable.assign(value)


def _averaging_call(layer, call):
    """``layer``'s call, setting its momentum to (n-1)/n before its n-th call."""
    calls = 0

    def averaging(*args, **kwargs):
        nonlocal calls
        calls += 1
        layer.momentum = (calls - 1) / calls
        return call(*args, **kwargs)

    return averaging


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
    corrupt: CorruptFn | None = None,
    desc: str = "corruptions",
) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """``{"plain"|"adapted": {corruption: {severity: metrics}}}`` over a corruption suite.

    ``corrupt`` is the suite's function (default: the own suite,
    :func:`hemaflow.imaging.corruptions.corrupt`), so every benchmark is scored alike.
    """
    from hemaflow.modeling.inference import predict_arrays

    if corrupt is None:
        from hemaflow.imaging import corruptions

        corrupt = corruptions.corrupt
    modes = ["plain", "adapted"] if bn_adaptation else ["plain"]
    out: dict[str, dict[str, dict[int, dict[str, float]]]] = {m: {} for m in modes}
    jobs = [(n, s) for n in names for s in severities]
    for name, severity in progress(jobs, total=len(jobs), desc=desc):
        corrupted = corrupt(images, name, severity, seed)
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


def corruption_jobs(config: Config) -> list[tuple[CorruptFn, str]]:
    """Every corruption evaluate writes a set of at each severity: both suites, in order."""
    from hemaflow.imaging import corruptions, independent

    ev = config.evaluate
    jobs: list[tuple[CorruptFn, str]] = [
        (corruptions.corrupt, n) for n in corruptions.corruption_names(ev.corruptions)
    ]
    return jobs + [(independent.corrupt, n) for n in independent.names(ev.independent)]


def generation_seconds(probe: np.ndarray, config: Config, sample: int) -> float:
    """Seconds evaluate will spend writing its corruption sets (both suites) of ``sample``
    images, timed by writing every set of ``probe`` (a few images; the plan times on val, as
    nothing that chooses reads test). Scales with the images, not with the ensemble.

    Each corruption runs once untimed first: its first call builds ops (a third of a second
    on a CPU), which evaluate pays once, not per image.
    """
    jobs, severities = corruption_jobs(config), config.evaluate.severities
    if not jobs or not len(probe) or sample < 1:
        return 0.0
    for corrupt, name in jobs:
        corrupt(probe, name, severities[0], config.seed)
    start = time.perf_counter()
    for corrupt, name in jobs:
        for severity in severities:
            corrupt(probe, name, severity, config.seed)
    return (time.perf_counter() - start) * sample / len(probe)


def trained_kinds(policy: Any) -> set[str]:
    """The training-policy families this config's augmentation actually applies (p > 0)."""
    from hemaflow.imaging.policy import FAMILIES

    return {f for f in FAMILIES if getattr(policy, f).p > 0 and getattr(policy, f).strength > 0}


def policy_coverage(kinds: list[str | None], active: set[str]) -> str:
    """ "yes" when training applies every kind of a family's corruptions, "partly", or "no"."""
    hits = [k is not None and k in active for k in kinds]
    return "yes" if all(hits) else "partly" if any(hits) else "no"


def independent_block(
    summary: dict[str, Any],
    adapted: dict[str, Any] | None,
    names: list[str],
    active_kinds: set[str],
) -> dict[str, Any]:
    """The metrics.json ``independent`` block: the robustness summary, annotated per
    corruption with its family and the training-policy family of the same kind."""
    from hemaflow.imaging.independent import INDEPENDENT

    per = {
        name: {
            **row,
            "family": INDEPENDENT[name].family,
            "trained_kind": INDEPENDENT[name].trained_kind,
            "trained": INDEPENDENT[name].trained_kind in active_kinds,
        }
        for name, row in summary["per_corruption"].items()
    }
    per_family = {
        family: {
            **row,
            "trained_kinds": sorted(
                {k for n in row["corruptions"] if (k := INDEPENDENT[n].trained_kind)}
            ),
            "training_policy_has_kind": policy_coverage(
                [INDEPENDENT[n].trained_kind for n in row["corruptions"]], active_kinds
            ),
        }
        for family, row in summary["per_family"].items()
    }
    keep = ("worst_family", "worst_family_accuracy", "severity5_accuracy", "by_severity")
    return {
        "corruptions": names,
        "accuracy": summary["corrupted_accuracy"],
        "balanced_accuracy": summary["corrupted_balanced_accuracy"],
        "mean_balanced_error": summary["mean_balanced_error"],
        "mean_balanced_error_increase": summary["mean_balanced_error_increase"],
        **{k: summary[k] for k in keep},
        "per_corruption": per,
        "per_family": per_family,
        "bn_adaptation": None
        if adapted is None
        else {
            "accuracy": adapted["corrupted_accuracy"],
            "balanced_accuracy": adapted["corrupted_balanced_accuracy"],
            "mean_balanced_error": adapted["mean_balanced_error"],
            **{k: adapted[k] for k in keep},
            "per_corruption": adapted["per_corruption"],
            "per_family": adapted["per_family"],
        },
    }


def _headline(scored: dict[str, Any]) -> dict[str, Any]:
    keep = ("count", "accuracy", "balanced_accuracy", "ece", "log_loss", "macro_f1")
    return {k: scored[k] for k in keep}


# --------------------------------------------------------------------------- report


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
                        "set": "corrupted, own suite (mean)",
                        "accuracy": body["corrupted_accuracy"],
                        "balanced_accuracy": body["corrupted_balanced_accuracy"],
                    }
                ]
                if body.get("robustness")
                else []
            ),
            *(
                [
                    {
                        "set": "corrupted, independent benchmark (mean)",
                        "accuracy": body["independent"]["accuracy"],
                        "balanced_accuracy": body["independent"]["balanced_accuracy"],
                    }
                ]
                if body.get("independent")
                else []
            ),
        ],
        ["set", "count", "accuracy", "balanced_accuracy", "macro_f1", "ece", "log_loss"],
    )
    page.paragraph(body["inference"])
    if body["model"].get("members"):
        page.paragraph("Ensemble members: " + ", ".join(map(str, body["model"]["members"])) + ".")
    for name, note in (body.get("weights_fallback") or {}).items():
        page.paragraph(f"PREFLIGHT ONLY: {name}: {note}; these figures say nothing about it.")
    page.heading("Per class (test)")
    page.table([{"class": k, **v} for k, v in body["per_class"].items()])
    page.figure(
        "confusion_test.png",
        plots.confusion_matrix_png(np.asarray(body["confusion_matrix"]), test.class_names, "test"),
    )
    if body.get("bmk"):
        page.figure(
            "confusion_bmk.png",
            plots.confusion_matrix_png(
                np.asarray(body["bmk"]["confusion_matrix"]), test.class_names, "Bmk"
            ),
        )
    page.heading("Calibration")
    page.figure(
        "reliability_test.png",
        plots.reliability_png(body["reliability"], "test reliability"),
        f"ECE (15 bins) {body['ece']:.4f}",
    )
    robustness = body.get("robustness")
    if robustness:
        page.heading("Robustness (MedMNIST-C style)")
        page.paragraph(
            "balanced_error: 1 - balanced accuracy under a corruption, averaged over "
            "severities; balanced_error_increase: that minus this model's clean balanced error "
            "on the same images (not MedMNIST-C's relative balanced error, which is normalised "
            "by a reference model's errors)."
        )
        per = robustness["per_corruption"]
        page.figure(
            "corruption_accuracy.png",
            plots.bar_chart(
                list(per),
                [r["accuracy"] for r in per.values()],
                "accuracy per corruption (mean over severities)",
                ylim=(0, 1.05),
            ),
        )
        page.figure(
            "corruption_balanced_error.png",
            plots.bar_chart(
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
            plots.severity_png(by_corruption, robustness["clean_accuracy_on_sample"]),
        )
        rows = [
            {
                "corruption": name,
                "accuracy": row["accuracy"],
                "balanced_error": row["balanced_error"],
                "balanced_error_increase": row["balanced_error_increase"],
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
    if body.get("independent"):
        independent_section(page, body, test, seed)
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
        page.figure("mistakes.png", plots.image_grid(test.images[wrong], titles))
    else:
        page.paragraph("No mistakes on the test split.")
    return page


def independent_section(page, body: dict[str, Any], test: LabelledSplit, seed: int) -> None:
    """The report's independent benchmark: beside the own suite per family and severity."""
    from hemaflow.imaging import independent

    ind, own = body["independent"], body["robustness"]
    page.heading("Independent corruption benchmark (albumentations)")
    page.paragraph(
        "The own suite above is built from the same ops as training augmentation, so it "
        "reads optimistic. These corruptions come from albumentations, which no training code "
        f"uses, on the same {body['corruption_sample_count']} test images. Accuracy "
        f"{ind['accuracy']:.4f} here against {body['corrupted_accuracy']:.4f} on the own "
        f"suite; worst family {ind['worst_family']} ({ind['worst_family_accuracy']:.4f}). "
        "'training policy has this kind': whether this run's augmentation policy applies "
        "(p > 0) the training family of the same kind as the family's corruptions."
    )
    families = list(dict.fromkeys([*own["per_family"], *ind["per_family"]]))
    page.table(
        [
            {
                "family": family,
                "own_suite_accuracy": own["per_family"].get(family, {}).get("accuracy", "n/a"),
                "independent_accuracy": ind["per_family"].get(family, {}).get("accuracy", "n/a"),
                "training policy has this kind": ind["per_family"]
                .get(family, {})
                .get("training_policy_has_kind", "n/a"),
                "independent corruptions": ", ".join(
                    ind["per_family"].get(family, {}).get("corruptions", [])
                ),
            }
            for family in families
        ]
    )
    adapted = ind.get("bn_adaptation") or {}
    own_adapted = body.get("bn_adaptation") or {}
    page.table(
        [
            {
                "severity": int(severity),
                "own_suite_accuracy": own["by_severity"][severity]["accuracy"],
                "independent_accuracy": row["accuracy"],
                **(
                    {
                        "own_suite_bn_adapted": own_adapted["by_severity"][severity]["accuracy"],
                        "independent_bn_adapted": adapted["by_severity"][severity]["accuracy"],
                    }
                    if adapted
                    else {}
                ),
            }
            for severity, row in ind["by_severity"].items()
        ]
    )
    per = ind["per_corruption"]
    page.figure(
        "independent_accuracy.png",
        plots.bar_chart(
            [f"{name} ({row['family']})" for name, row in per.items()],
            [row["accuracy"] for row in per.values()],
            "independent benchmark: accuracy per corruption (mean over severities)",
            ylim=(0, 1.05),
        ),
    )
    page.table(
        [
            {
                "corruption": name,
                "family": row["family"],
                "trained_kind": row["trained_kind"] or "none",
                "accuracy": row["accuracy"],
                "balanced_error": row["balanced_error"],
                **(
                    {"accuracy_bn_adapted": adapted["per_corruption"][name]["accuracy"]}
                    if adapted
                    else {}
                ),
            }
            for name, row in per.items()
        ]
    )
    page.figure(
        "independent_grid.png",
        independent.grid(test.images[0], ind["corruptions"], seed=seed),
        f"the independent benchmark on test image {test.ids[0]}",
    )


# --------------------------------------------------------------------------- stage


INDEPENDENT_KEYS = (
    "independent_accuracy",
    "independent_worst_family",
    "independent_worst_family_accuracy",
    "independent_severity5_accuracy",
    "bn_adapted_independent_accuracy",
)


def score_independent(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    clean_balanced_accuracy: float,
    config: Config,
) -> dict[str, Any]:
    """The independent benchmark on the own suite's sample: the ``independent`` block and its
    top-level figures (all None when ``evaluate.independent`` is empty)."""
    from hemaflow.imaging import independent

    ev = config.evaluate
    selected = independent.names(ev.independent)
    if not selected:
        return {"independent": None, **dict.fromkeys(INDEPENDENT_KEYS)}
    log.info(
        "independent benchmark: %d corruptions x %d severities on %d images",
        len(selected),
        len(ev.severities),
        len(labels),
    )
    start = time.perf_counter()
    results = corruption_results(
        model,
        images,
        labels,
        class_names,
        selected,
        list(ev.severities),
        ev.batch_size,
        config.seed,
        ev.bn_adaptation,
        corrupt=independent.corrupt,
        desc="independent",
    )
    families = independent.families(selected)
    plain = metrics.robustness_summary(clean_balanced_accuracy, results["plain"], families)
    adapted = (
        metrics.robustness_summary(clean_balanced_accuracy, results["adapted"], families)
        if ev.bn_adaptation
        else None
    )
    block = independent_block(plain, adapted, selected, trained_kinds(config.augment.policy))
    block["seconds"] = round(time.perf_counter() - start, 3)
    return {
        "independent": block,
        "independent_accuracy": block["accuracy"],
        "independent_worst_family": block["worst_family"],
        "independent_worst_family_accuracy": block["worst_family_accuracy"],
        "independent_severity5_accuracy": block["severity5_accuracy"],
        "bn_adapted_independent_accuracy": None
        if adapted is None
        else adapted["corrupted_accuracy"],
    }


def weights_fallback_notes(model_manifest: dict[str, Any], config: Config) -> dict[str, str]:
    """Backbone -> why its pretrained weights were replaced by random initialisation.

    Only a preflight allows the fallback (``model.weights_fallback: random``); its figures
    then say nothing about the recipe, so every report must say so. An ensemble member's
    note is in its own manifest; where that cannot be read, the config's permission is
    reported instead of a silent "none".
    """
    if config.model.weights_fallback != "random":
        return {}
    from hemaflow.modeling import loading

    notes = {}
    for member in model_manifest.get("members") or [model_manifest]:
        name = str(member.get("backbone") or member.get("path") or "model")
        info = member
        if "weights_fallback" not in member and member.get("path"):
            try:
                info = loading.read_model_manifest(member["path"])
            except Exception:  # a member folder no longer reachable from here
                info = {"weights_fallback": "unknown (member manifest unreadable)"}
        if info.get("weights_fallback"):
            notes[name] = str(info["weights_fallback"])
    return notes


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
            "members": [m.get("backbone") for m in model_manifest.get("members") or []],
        },
        "weights_fallback": weights_fallback_notes(model_manifest, config),
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
    keep = labelled.subsample(len(test), ev.max_images, config.seed)
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
    own_families = {n: corruptions.CORRUPTIONS[n].family for n in names}
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
    robustness = metrics.robustness_summary(clean_sample_bacc, results["plain"], own_families)
    robustness["clean_accuracy_on_sample"] = metrics.accuracy(
        sample_labels, test_probs[keep].argmax(axis=1)
    )
    body.update(
        {
            "corrupted_accuracy": robustness["corrupted_accuracy"],
            "corrupted_balanced_accuracy": robustness["corrupted_balanced_accuracy"],
            "corrupted_worst_family": robustness["worst_family"],
            "corrupted_worst_family_accuracy": robustness["worst_family_accuracy"],
            "corrupted_severity5_accuracy": robustness["severity5_accuracy"],
            "mean_balanced_error": robustness["mean_balanced_error"],
            "mean_balanced_error_increase": robustness["mean_balanced_error_increase"],
            "per_corruption": {
                name: {k: row[k] for k in ("accuracy", "balanced_error", "balanced_error_increase")}
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
        adapted = metrics.robustness_summary(clean_sample_bacc, results["adapted"], own_families)
        body["bn_adaptation"] = {
            "corrupted_accuracy": adapted["corrupted_accuracy"],
            "corrupted_balanced_accuracy": adapted["corrupted_balanced_accuracy"],
            "mean_balanced_error": adapted["mean_balanced_error"],
            "per_corruption": adapted["per_corruption"],
            "per_family": adapted["per_family"],
            "by_severity": adapted["by_severity"],
            "batchnorm_layers": len(batchnorm_layers(model)),
        }

    body["bn_adapted_corrupted_accuracy"] = (body["bn_adaptation"] or {}).get("corrupted_accuracy")
    body.update(
        score_independent(
            model, sample_images, sample_labels, class_names, clean_sample_bacc, config
        )
    )

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
            staging / "model_card.md",
            modelcard.model_card(card_manifest, body, data_manifest or {}),
        )
        build_report(body, test, test_probs, history, body["synthetic"], names, config.seed).write(
            staging
        )
    log.info(
        "accuracy %.4f, balanced %.4f, ECE %.4f, bmk %s, corrupted %.4f, independent %s",
        body["accuracy"],
        body["balanced_accuracy"],
        body["ece"],
        body["bmk_accuracy"],
        body["corrupted_accuracy"],
        body["independent_accuracy"],
    )
    return body


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
        raise StageError(
            f"{what}: {len(predictions)} predictions for {len(split)} images; source ids must "
            "be unique"
        )
    try:
        order = np.array([index[i] for i in split.ids])
    except KeyError as exc:
        raise StageError(f"{what}: no prediction for example {exc}") from exc
    if not np.array_equal(predictions.labels[order], split.labels):
        raise StageError(f"{what}: labels of the Beam predictions do not match the data")
    return predictions.probs[order]


def is_artifact(data_dir: str) -> bool:
    """Whether ``data_dir`` is a hemaflow Dataset or TFRecord folder (it has a manifest.json)."""
    return storage.exists(storage.join(data_dir, "manifest.json"))


Scored = tuple[LabelledSplit, np.ndarray, tuple[np.ndarray, np.ndarray] | None, str, dict]
"""test split, its probabilities, Bmk (probabilities, labels) or None, how, data manifest."""


def run(model_dir: str, data_dir: str, out_dir: str, config: Config) -> dict[str, Any]:
    """Evaluate a model on labelled data and publish metrics, report and model card.

    ``data_dir`` is a TFRecord or Dataset folder (its test split, and Bmk when present) or a
    raw labelled source; ``model_dir`` a Model folder or a .keras file.
    """
    from hemaflow.imaging import corruptions, independent

    storage.check_output(out_dir, inputs=[model_dir, data_dir])
    # Unknown corruption names fail here, before any scoring.
    corruptions.corruption_names(config.evaluate.corruptions)
    independent.names(config.evaluate.independent)
    model, manifest, history = load_for_evaluation(model_dir)
    score = score_artifact if is_artifact(data_dir) else score_source
    test, test_probs, bmk, note, data_manifest = score(model, manifest, str(data_dir), config)
    return evaluate_loaded(
        model,
        manifest,
        test,
        test_probs,
        bmk,
        out_dir,
        config,
        note,
        data_manifest=data_manifest,
        history=history,
        source=str(data_dir),
    )


def _predict_on_beam(model_dir: str, data_dir: str, split: str, aug):
    """Beam's own log says little of a run's progress: say when it starts and what it did."""
    from hemaflow.modeling import inference

    log.info("%s: scoring on Beam (%s)", split, aug.runner)
    start = time.perf_counter()
    preds = inference.predict_tfrecords(
        model_dir, data_dir, split, None, aug.runner, aug.runner_options
    )
    seconds = time.perf_counter() - start
    count = len(preds.ids)
    rate = count / max(seconds, 1e-9)
    log.info("%s: %d images in %.0f s (%.1f images/s)", split, count, seconds, rate)
    return preds


def score_artifact(model, manifest: dict[str, Any], source: str, config: Config) -> Scored:
    """Test (and Bmk) probabilities on a TFRecord or Dataset folder."""
    from hemaflow.data import dataset
    from hemaflow.modeling import inference

    data_dir = storage.readable(source)
    test = labelled.read_split(data_dir, "test")
    check_compatible(manifest, test, source)
    model_dir = manifest["path"]
    has_saved_model = storage.exists(storage.join(model_dir, "saved_model", "saved_model.pb"))
    has_bmk = test.kind == "tfrecords" and has_split(data_dir, "bmk")
    aug, batch = config.augment, config.evaluate.batch_size
    bmk = None
    if test.kind == "tfrecords" and has_saved_model:
        preds = _predict_on_beam(model_dir, data_dir, "test", aug)
        test_probs = _align(preds, test, f"{source} test")
        if has_bmk:
            bmk_preds = _predict_on_beam(model_dir, data_dir, "bmk", aug)
            bmk = (bmk_preds.probs, bmk_preds.labels)
        note = (
            f"Clean test and Bmk scored on Beam ({aug.runner}) with tfx-bsl RunInference over "
            "the SavedModel's serve_examples signature; corrupted copies generated in memory "
            "and scored in process."
        )
    else:
        test_probs = inference.predict_arrays(model, test.images, batch)
        if has_bmk:
            bmk_split = labelled.read_split(data_dir, "bmk")
            bmk = (inference.predict_arrays(model, bmk_split.images, batch), bmk_split.labels)
        note = "All sets scored in process with the Keras model (no SavedModel or no TFRecords)."
    return test, test_probs, bmk, note, dataset.read_manifest(data_dir)


def score_source(model, manifest: dict[str, Any], source: str, config: Config) -> Scored:
    """Test probabilities on a raw labelled source read at the model's working size."""
    from hemaflow.modeling import inference

    class_names = list(manifest["class_names"])
    size = int(manifest["image_size"])
    if not size:
        raise StageError(f"{manifest['path']}: no manifest.json and no fixed input size")
    data = labelled.read_labelled_source(source, size, class_names, config)
    if len(data.labels) == 0:
        raise StageError(f"{source}: no labelled images to evaluate")
    test = LabelledSplit(
        np.asarray(data.images, np.uint8),
        np.asarray(data.labels, np.int64),
        np.asarray(data.ids).astype(str),
        class_names,
        int(data.images.shape[1]),
        "source",
        {"synthetic": data.synthetic},
    )
    check_compatible(manifest, test, source)
    probs = inference.predict_arrays(model, test.images, config.evaluate.batch_size)
    note = "All images scored in process with the Keras model."
    return test, probs, None, note, {"synthetic": data.synthetic, "source": source}
