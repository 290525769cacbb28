"""Stage 1, ingest: read a source, check it, split it, and write a Dataset artifact.

The source is decoded to uint8 RGB at the working size (:mod:`hemaflow.data.sources`), checked
for exact and near duplicates, label conflicts and outliers (:mod:`hemaflow.data.quality`),
cleaned as ``data.drop`` says (every dropped image is listed with its reason), and split
stratified by class into train/val/test with ``config.seed``. Duplicate groups that remain
are kept whole inside one split, so no picture is seen in training and again in testing.

Output folder (published atomically through :func:`storage.artifact_dir`)::

    train.npz val.npz test.npz   the splits (hemaflow.data.dataset layout)
    manifest.json                class names, size, counts, source, seed, synthetic, sha256s
    metrics.json                 counts per split and class, warnings, and under ``findings``
                                 every finding: skipped files, bad images, duplicate groups,
                                 label conflicts, outliers, dropped images with reasons
    report.html (+ PNG figures)  class histograms, image sizes, sample and finding grids

Run alone: ``hemaflow ingest SOURCE --out DIR``.
"""

from __future__ import annotations

import html
import json
import logging
from typing import Any

import numpy as np

from hemaflow import storage
from hemaflow.config import Config
from hemaflow.data import dataset, quality
from hemaflow.data.sources import LoadedSource, read_source
from hemaflow.errors import StageError
from hemaflow.reporting import plots, report

log = logging.getLogger("hemaflow.ingest")

SPLITS = dataset.DATA_SPLITS


def run(source: str, out_dir: str, config: Config) -> dict[str, Any]:
    """Ingest ``source`` into a Dataset folder at ``out_dir``; returns its metrics."""
    storage.check_output(out_dir, inputs=[source])
    data = config.data
    loaded = read_source(source, config, min_classes=2)
    log.info("checking %d images for duplicates and outliers", len(loaded.labels))
    findings = quality.analyse(
        loaded.images, loaded.labels, data.near_duplicate_distance, data.outlier_threshold
    )
    dropped = choose_drops(findings, loaded, config)
    keep = np.ones(len(loaded.labels), dtype=bool)
    keep[list(dropped)] = False
    if not keep.any():
        raise StageError(f"{source}: every image was dropped by the data checks")
    kept = np.flatnonzero(keep)
    position = {int(i): k for k, i in enumerate(kept)}
    groups = [
        [position[i] for i in g if i in position]
        for g in findings.exact_groups + findings.near_groups
    ]
    assignment = stratified_split(
        loaded.labels[kept],
        [g for g in groups if len(g) > 1],
        data.split.val,
        data.split.test,
        config.seed,
    )
    if data.max_per_class:
        assignment = cap_per_class(
            assignment, loaded.labels[kept], data.max_per_class, data.split, config.seed
        )
    splits = {
        name: dataset.Split(
            loaded.images[kept[assignment == k]],
            loaded.labels[kept[assignment == k]],
            loaded.ids[kept[assignment == k]],
        )
        for k, name in enumerate(SPLITS)
    }
    counts = {name: class_counts(s.labels, loaded.class_names) for name, s in splits.items()}
    record = findings_record(findings, loaded, dropped)
    warnings = split_warnings(counts)
    for warning in warnings:
        log.warning(warning)
    finding_counts = {key: len(value) for key, value in record.items()}
    metrics = {
        "out_dir": str(out_dir),
        "source": loaded.description,
        "synthetic": loaded.synthetic,
        "class_names": loaded.class_names,
        "image_size": data.image_size,
        "original_sizes": loaded.original_sizes,
        "given_splits": _given_split_counts(loaded),
        "counts": counts,
        "totals": {name: len(s) for name, s in splits.items()},
        "warnings": warnings,
        "drop_policy": {
            "exact_duplicates": data.drop.exact_duplicates,
            "near_duplicates": data.drop.near_duplicates,
            "label_conflicts": data.drop.label_conflicts,
            "outliers": data.drop.outliers,
        },
        "finding_counts": finding_counts,
        "findings": record,
        # flat numbers, for pipeline metrics
        **{f"{name}_images": len(s) for name, s in splits.items()},
        "dropped_images": len(dropped),
        "outliers": len(findings.outliers),
        "label_conflicts": len(findings.conflicts),
        "exact_duplicate_groups": len(findings.exact_groups),
        "near_duplicate_groups": len(findings.near_groups),
    }
    with storage.artifact_dir(out_dir) as folder:
        files = {f"{name}.npz": dataset.save_split(folder, name, s) for name, s in splits.items()}
        dataset.write_manifest(
            folder,
            {
                "kind": "dataset",
                "class_names": loaded.class_names,
                "image_size": data.image_size,
                "counts": counts,
                "source": loaded.description,
                "original_sizes": loaded.original_sizes,
                "seed": config.seed,
                "split": {"val": data.split.val, "test": data.split.test},
                "synthetic": loaded.synthetic,
                "findings": finding_counts,
                "files": files,
            },
        )
        storage.write_text_atomic(
            folder / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True)
        )
        page = build_report(loaded, findings, dropped, splits, counts, source)
        for warning in warnings:
            page.parts.insert(0, f"<p><strong>Warning:</strong> {html.escape(warning)}</p>")
        page.write(folder)
    return metrics


# --------------------------------------------------------------------------- decisions


def choose_drops(
    findings: quality.Findings, loaded: LoadedSource, config: Config
) -> dict[int, str]:
    """Index -> reason for every image ``data.drop`` removes (first reason wins).

    Outliers go first; then every member of a label-conflict group (its true label is
    unknown); then all but the first remaining member of each exact, then near, group.
    """
    policy = config.data.drop
    ids = loaded.ids
    dropped: dict[int, str] = {}
    if policy.outliers:
        for i in findings.outliers:
            dropped[i] = f"outlier: {findings.outlier_reasons[i]}"
    if policy.label_conflicts:
        for group in findings.conflicts:
            names = sorted({loaded.class_names[loaded.labels[i]] for i in group})
            for i in group:
                dropped.setdefault(i, f"label conflict: same picture labelled {', '.join(names)}")
    for flag, groups, kind in (
        (policy.exact_duplicates, findings.exact_groups, "exact duplicate"),
        (policy.near_duplicates, findings.near_groups, "near duplicate"),
    ):
        if not flag:
            continue
        for group in groups:
            remaining = [i for i in group if i not in dropped]
            for i in remaining[1:]:
                dropped[i] = f"{kind} of {ids[remaining[0]]}"
    return dropped


def stratified_split(
    labels: np.ndarray, groups: list[list[int]], val: float, test: float, seed: int
) -> np.ndarray:
    """Split index per image (0 train, 1 val, 2 test), stratified by class, groups kept whole.

    Each group moves as one unit labelled by its first member. Per class the units are
    shuffled with a generator seeded by (seed, class), so one class's split does not depend
    on the others, and each unit goes to the split furthest below its target count.
    Every class with 3 or more images gets at least one image in each split.
    """
    labels = np.asarray(labels)
    unit_of = np.arange(len(labels))
    for group in groups:
        unit_of[group] = min(group)
    units: dict[int, list[int]] = {}
    for i, unit in enumerate(unit_of):
        units.setdefault(int(unit), []).append(i)
    assignment = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = [u for u in units.values() if labels[u[0]] == label]
        total = sum(len(u) for u in members)
        targets = np.array([0, round(total * val), round(total * test)], dtype=float)
        if total >= 3:
            targets[1:] = np.maximum(targets[1:], 1)
        targets[0] = total - targets[1:].sum()
        rng = np.random.default_rng([seed, int(label)])
        filled = np.zeros(3)
        for k in rng.permutation(len(members)):
            deficit = (targets - filled) / np.maximum(targets, 1)
            deficit[0] -= 1e-9  # ties go to val/test first so small classes get both
            choice = int(np.argmax(deficit[::-1]))
            choice = 2 - choice
            assignment[members[k]] = choice
            filled[choice] += len(members[k])
    return assignment


def cap_per_class(
    assignment: np.ndarray, labels: np.ndarray, max_per_class: int, split: Any, seed: int
) -> np.ndarray:
    """``assignment`` with at most ``max_per_class`` images of a class kept (the rest -1).

    Cut after the stratified split, so the split itself is unchanged: each split keeps a
    seeded random part of its images of a class, its share of ``max_per_class`` (at least
    one), for a quick run on a large source.
    """
    shares = (1.0 - split.val - split.test, split.val, split.test)
    out = np.asarray(assignment).copy()
    for label in np.unique(labels):
        for k, share in enumerate(shares):
            members = np.flatnonzero((out == k) & (labels == label))
            keep = max(1, round(max_per_class * share))
            rng = np.random.default_rng([seed, int(label), k])
            out[rng.permutation(members)[keep:]] = -1
    return out


def split_warnings(counts: dict[str, dict[str, int]]) -> list[str]:
    """Classes missing from a split: training or evaluation on them would be blind."""
    return [
        f"class '{name}' has no images in the {split} split"
        for split, per_class in counts.items()
        for name, n in per_class.items()
        if n == 0
    ]


def class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts, strict=True)}


# --------------------------------------------------------------------------- records


def findings_record(
    findings: quality.Findings, loaded: LoadedSource, dropped: dict[int, str]
) -> dict[str, list]:
    """JSON-ready lists of every finding, by image id."""
    ids, labels, names = loaded.ids, loaded.labels, loaded.class_names

    def members(group: list[int]) -> list[dict[str, str]]:
        return [{"id": str(ids[i]), "label": names[labels[i]]} for i in group]

    return {
        "skipped_files": loaded.skipped,
        "bad_images": loaded.bad_images,
        "exact_duplicate_groups": [members(g) for g in findings.exact_groups],
        "near_duplicate_groups": [members(g) for g in findings.near_groups],
        "label_conflicts": [members(g) for g in findings.conflicts],
        "outliers": [
            {
                "id": str(ids[i]),
                "label": names[labels[i]],
                "score": round(float(findings.outlier_scores[i]), 2),
                "reason": findings.outlier_reasons[i],
            }
            for i in findings.outliers
        ],
        "dropped": [
            {"id": str(ids[i]), "label": names[labels[i]], "reason": reason}
            for i, reason in sorted(dropped.items())
        ],
    }


def _given_split_counts(loaded: LoadedSource) -> dict[str, int] | None:
    if loaded.given_splits is None:
        return None
    values, counts = np.unique(loaded.given_splits, return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def _short(text: str, width: int = 16) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def build_report(
    loaded: LoadedSource,
    findings: quality.Findings,
    dropped: dict[int, str],
    splits: dict[str, dataset.Split],
    counts: dict[str, dict[str, int]],
    source: str,
    samples_per_class: int = 8,
    most_rows: int = 12,
) -> report.Report:
    """The HTML data report: histograms, sizes, samples, and pictures of every finding kind."""
    page = report.Report(title=f"hemaflow ingest: {source}", synthetic=loaded.synthetic)
    names = loaded.class_names
    page.heading("Summary")
    page.table(
        [{"split": name, "images": len(s), **counts[name]} for name, s in splits.items()],
        ["split", "images", *names],
    )
    page.paragraph(
        f"Source: {json.dumps(loaded.description, default=str)}. Working size "
        f"{loaded.images.shape[1]} px. {len(dropped)} images dropped, "
        f"{len(loaded.skipped)} non-image files skipped, {len(loaded.bad_images)} bad images skipped."
    )
    for name in splits:
        page.figure(
            f"classes_{name}.png",
            plots.bar_chart(names, list(counts[name].values()), f"{name}: images per class"),
            f"{name}: images per class",
        )
    page.heading("Image sizes in the source")
    page.table([{"size (HxW)": k, "images": v} for k, v in sorted(loaded.original_sizes.items())])

    page.heading("Samples per class")
    rng = np.random.default_rng(0)
    rows, titles = [], []
    for label, name in enumerate(names):
        members = rng.permutation(np.flatnonzero(loaded.labels == label))[:samples_per_class]
        if len(members):
            rows.append([loaded.images[i] for i in members])
            titles.append(f"{name} ({int(np.sum(loaded.labels == label))} images)")
    if rows:
        page.figure("samples.png", plots.mosaic_png(rows, titles), "random examples of every class")

    def describe(i: int) -> str:
        return f"{_short(str(loaded.ids[i]))} [{names[loaded.labels[i]]}]"

    def finding_grid(title: str, file: str, rows: list[list[int]], caption: str) -> None:
        page.heading(title)
        if not rows:
            page.paragraph("none found")
            return
        rows = rows[:most_rows]
        images = [[loaded.images[i] for i in r] for r in rows]
        labels = ["  |  ".join(describe(i) for i in r) for r in rows]
        page.figure(file, plots.mosaic_png(images, labels), caption)

    finding_grid(
        f"Exact duplicates ({len(findings.exact_groups)} groups)",
        "exact_duplicates.png",
        findings.exact_groups,
        "one row per group of identical pictures",
    )
    finding_grid(
        f"Near duplicates ({len(findings.near_groups)} groups)",
        "near_duplicates.png",
        findings.near_groups,
        "one row per group of perceptual-hash neighbours",
    )
    finding_grid(
        f"Label conflicts ({len(findings.conflicts)} groups)",
        "label_conflicts.png",
        findings.conflicts,
        "the same picture under different labels, one row per group",
    )
    ranked = sorted(findings.outliers, key=lambda i: -float(findings.outlier_scores[i]))
    finding_grid(
        f"Outliers ({len(findings.outliers)})",
        "outliers.png",
        [ranked[k : k + 4] for k in range(0, len(ranked), 4)],
        "images unlike blood smears, most extreme first",
    )
    page.heading("Dropped images")
    rows = [
        {"id": loaded.ids[i], "label": names[loaded.labels[i]], "reason": reason}
        for i, reason in sorted(dropped.items())
    ]
    page.table(rows[:200], ["id", "label", "reason"])
    if len(rows) > 200:
        page.paragraph(f"... and {len(rows) - 200} more; the full list is in metrics.json")
    page.heading("Skipped files")
    page.table(loaded.skipped + loaded.bad_images, ["path", "reason"])
    return page
