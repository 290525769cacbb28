"""Classification, calibration and robustness metrics (pure numpy, no framework imports).

Robustness follows MedMNIST-C: for each corruption the balanced error (1 - balanced accuracy)
is averaged over severities, and compared with the same model's clean balanced error:
``balanced_error_increase`` is the difference (how much error the corruption adds),
``balanced_error_ratio`` the quotient (undefined when the clean error is zero, reported as
None then). Neither is MedMNIST-C's *relative* balanced error, which normalises by a reference
model's errors; hemaflow has no reference model, so it reports none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ECE_BINS = 15


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels: {y_true.shape[0]} true labels but {y_pred.shape[0]} predictions")
    if y_true.size == 0:
        raise ValueError("labels: no examples to score")
    return y_true, y_pred


def _check_probs(probs: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"probabilities: expected shape [{y_true.shape[0]}, classes], got {list(probs.shape)}"
        )
    if y_true.size and (y_true.min() < 0 or y_true.max() >= probs.shape[1]):
        raise ValueError(f"labels: values must be in [0, {probs.shape[1] - 1}]")
    return probs, y_true


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]`` (rows are the true classes)."""
    y_true, y_pred = _check(y_true, y_pred)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _check(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def balanced_accuracy(y_true, y_pred, num_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true`` (chance is 1/classes, not the majority)."""
    y_true, y_pred = _check(y_true, y_pred)
    n = num_classes or int(max(y_true.max(), y_pred.max()) + 1)
    matrix = confusion_matrix(y_true, y_pred, n)
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def per_class_prf(y_true, y_pred, num_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def reliability(probs, y_true, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Reliability-diagram data: per confidence bin, mean confidence, accuracy and count."""
    probs, y_true = _check_probs(probs, y_true)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds confidences in (edges[i], edges[i+1]]; a confidence of exactly 0 joins bin 0.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    safe = np.maximum(counts, 1)
    return {
        "edges": edges.tolist(),
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (acc_sum / safe).tolist(),
        "count": counts.astype(int).tolist(),
    }


def expected_calibration_error(probs, y_true, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted gap between confidence and accuracy over ``bins`` bins."""
    table = reliability(probs, y_true, bins)
    counts = np.asarray(table["count"], dtype=np.float64)
    gaps = np.abs(np.asarray(table["confidence"]) - np.asarray(table["accuracy"]))
    return float(np.sum(counts * gaps) / max(counts.sum(), 1.0))


def log_loss(probs, y_true, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood of the true class."""
    probs, y_true = _check_probs(probs, y_true)
    picked = probs[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, eps, 1.0))))


def classification_metrics(
    probs, y_true, class_names: Sequence[str], with_reliability: bool = True
) -> dict[str, Any]:
    """Every headline metric of one scored split, as plain JSON values."""
    probs, y_true = _check_probs(probs, y_true)
    if probs.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities have {probs.shape[1]} classes but class_names has {len(class_names)}"
        )
    n = len(class_names)
    y_pred = probs.argmax(axis=1)
    prf = per_class_prf(y_true, y_pred, n)
    out: dict[str, Any] = {
        "count": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, n),
        "ece": expected_calibration_error(probs, y_true),
        "log_loss": log_loss(probs, y_true),
        "per_class": {
            name: {
                "precision": float(prf["precision"][i]),
                "recall": float(prf["recall"][i]),
                "f1": float(prf["f1"][i]),
                "support": int(prf["support"][i]),
            }
            for i, name in enumerate(class_names)
        },
        "macro_f1": float(np.mean(prf["f1"][prf["support"] > 0])),
        "confusion_matrix": confusion_matrix(y_true, y_pred, n).tolist(),
    }
    if with_reliability:
        out["reliability"] = reliability(probs, y_true)
    return out


def grouped_summary(
    corrupted: Mapping[str, Mapping[int, Mapping[str, float]]],
    families: Mapping[str, str],
) -> dict[str, Any]:
    """Accuracy per family and per severity, and the worst family and the severity-5 figure.

    A mean over one corruption suite hides where it fails: a model can shrug off noise and
    collapse under colour casts. Means are over every (corruption, severity) cell of the
    group, so a family's figure weighs its corruptions equally. ``severity5_accuracy`` is
    None when severity 5 was not measured.
    """
    missing = [name for name in corrupted if name not in families]
    if missing:
        raise ValueError(f"families: no family for {', '.join(missing)}")
    cells: dict[str, list[Mapping[str, float]]] = {}
    by_sev: dict[int, list[Mapping[str, float]]] = {}
    members: dict[str, list[str]] = {}
    for name, by_severity in corrupted.items():
        family = families[name]
        members.setdefault(family, []).append(name)
        for severity, row in by_severity.items():
            cells.setdefault(family, []).append(row)
            by_sev.setdefault(int(severity), []).append(row)

    def means(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
        return {
            "accuracy": float(np.mean([r["accuracy"] for r in rows])),
            "balanced_accuracy": float(np.mean([r["balanced_accuracy"] for r in rows])),
        }

    per_family = {f: {**means(rows), "corruptions": members[f]} for f, rows in cells.items()}
    by_severity = {str(s): means(rows) for s, rows in sorted(by_sev.items())}
    worst = min(per_family, key=lambda f: per_family[f]["accuracy"]) if per_family else None
    return {
        "per_family": per_family,
        "by_severity": by_severity,
        "worst_family": worst,
        "worst_family_accuracy": None if worst is None else per_family[worst]["accuracy"],
        "severity5_accuracy": by_severity.get("5", {}).get("accuracy"),
    }


def robustness_summary(
    clean_balanced_accuracy: float,
    corrupted: Mapping[str, Mapping[int, Mapping[str, float]]],
    families: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """MedMNIST-C summary from ``{corruption: {severity: {"accuracy", "balanced_accuracy"}}}``.

    Per corruption: balanced error averaged over severities, its difference from and ratio to
    the clean balanced error, and mean accuracy. Overall: the means of those over corruptions
    and the mean accuracy over every corruption x severity. With ``families`` (corruption ->
    family) also :func:`grouped_summary`'s per-family and per-severity figures.
    """
    if not corrupted:
        raise ValueError("corrupted: no corruption results to summarise")
    clean_be = 1.0 - float(clean_balanced_accuracy)
    per: dict[str, dict[str, Any]] = {}
    all_acc, all_bacc = [], []
    for name, by_severity in corrupted.items():
        if not by_severity:
            raise ValueError(f"corrupted[{name!r}]: no severities")
        be = [1.0 - float(r["balanced_accuracy"]) for r in by_severity.values()]
        acc = [float(r["accuracy"]) for r in by_severity.values()]
        all_acc.extend(acc)
        all_bacc.extend(1.0 - e for e in be)
        mean_be = float(np.mean(be))
        per[name] = {
            "balanced_error": mean_be,
            "balanced_error_increase": mean_be - clean_be,
            "balanced_error_ratio": (mean_be / clean_be) if clean_be > 0 else None,
            "accuracy": float(np.mean(acc)),
            "by_severity": {
                str(s): {k: float(v) for k, v in r.items() if isinstance(v, (int, float))}
                for s, r in sorted(by_severity.items())
            },
        }
    ratios = [p["balanced_error_ratio"] for p in per.values()]
    grouped = grouped_summary(corrupted, families) if families is not None else {}
    return {
        "clean_balanced_error": clean_be,
        "mean_balanced_error": float(np.mean([p["balanced_error"] for p in per.values()])),
        "mean_balanced_error_increase": float(
            np.mean([p["balanced_error_increase"] for p in per.values()])
        ),
        "mean_balanced_error_ratio": None
        if any(r is None for r in ratios)
        else float(np.mean(ratios)),
        "corrupted_accuracy": float(np.mean(all_acc)),
        "corrupted_balanced_accuracy": float(np.mean(all_bacc)),
        "per_corruption": per,
        **grouped,
    }
