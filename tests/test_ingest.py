"""The ingest stage end to end: findings on real images, splits, determinism, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hemaflow.components import ingest
from hemaflow.components.ingest import choose_drops, stratified_split
from hemaflow.pipeline.cli import main
from PIL import Image

from hemaflow.config import load_config
from hemaflow.data import dataset
from hemaflow.errors import StageError
from tests.test_quality import non_cell_images


def config(size: int = 32, **overrides):
    return load_config("quickstart", overrides={"data.image_size": size, **overrides})


def _ids(split: dataset.Split) -> set[str]:
    return {str(i) for i in split.ids}


@pytest.fixture(scope="module")
def dirty(pbc_sample, tmp_path_factory) -> dict:
    """A copy of the real sample with known duplicates, a conflict and non-cell pictures."""
    root = tmp_path_factory.mktemp("dirty") / "cells"
    shutil.copytree(pbc_sample, root)
    first = {c: sorted((root / c).iterdir()) for c in ("basophil", "monocyte", "platelet")}
    shutil.copy2(first["basophil"][0], root / "basophil" / "zz_copy.jpg")
    shutil.copy2(first["monocyte"][1], root / "monocyte" / "zz_copy.jpg")
    with Image.open(first["platelet"][2]) as im:
        im.save(root / "platelet" / "zz_reencoded.jpg", quality=70)
    shutil.copy2(first["monocyte"][3], root / "lymphocyte" / "zz_conflict.jpg")
    for k, (name, picture) in enumerate(non_cell_images(128).items()):
        target = root / ("neutrophil", "ig")[k % 2] / f"zz_{name}.png"
        Image.fromarray(picture).save(target)
    (root / "README.txt").write_text("sample with planted problems")
    expected = {
        "exact": [
            {f"basophil/{first['basophil'][0].name}", "basophil/zz_copy.jpg"},
            {f"monocyte/{first['monocyte'][1].name}", "monocyte/zz_copy.jpg"},
            {f"monocyte/{first['monocyte'][3].name}", "lymphocyte/zz_conflict.jpg"},
        ],
        "near": [{f"platelet/{first['platelet'][2].name}", "platelet/zz_reencoded.jpg"}],
        "conflict": [{f"monocyte/{first['monocyte'][3].name}", "lymphocyte/zz_conflict.jpg"}],
        "outliers": {
            f"{('neutrophil', 'ig')[k % 2]}/zz_{name}.png"
            for k, name in enumerate(non_cell_images(8))
        },
    }
    out = tmp_path_factory.mktemp("out") / "dataset"
    summary = ingest.run(str(root), str(out), config(64))
    return {"root": root, "out": out, "summary": summary, "expected": expected}


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _group_sets(groups) -> list[set[str]]:
    return [{m["id"] for m in g} for g in groups]


def test_planted_findings_are_found_exactly(dirty):
    record = metrics(dirty["out"])["findings"]
    expected = dirty["expected"]
    assert sorted(map(sorted, _group_sets(record["exact_duplicate_groups"]))) == sorted(
        map(sorted, expected["exact"])
    )
    assert _group_sets(record["near_duplicate_groups"]) == expected["near"]
    assert _group_sets(record["label_conflicts"]) == expected["conflict"]
    assert {o["id"] for o in record["outliers"]} == expected["outliers"]
    assert [Path(s["path"]).name for s in record["skipped_files"]] == ["README.txt"]


def test_drops_follow_policy_with_reasons(dirty):
    record = metrics(dirty["out"])["findings"]
    reasons = {d["id"]: d["reason"] for d in record["dropped"]}
    expected = dirty["expected"]
    for outlier in expected["outliers"]:
        assert reasons[outlier].startswith("outlier: ")
    for member in expected["conflict"][0]:
        assert reasons[member] == "label conflict: same picture labelled lymphocyte, monocyte"
    assert reasons["basophil/zz_copy.jpg"].startswith("exact duplicate of basophil/")
    assert reasons["monocyte/zz_copy.jpg"].startswith("exact duplicate of monocyte/")
    assert len(reasons) == len(expected["outliers"]) + 2 + 2  # near duplicates are kept
    kept = set().union(*(_ids(dataset.load_split(dirty["out"], s)) for s in dataset.DATA_SPLITS))
    assert not kept & set(reasons)
    assert len(kept) == 240 + 4 + len(expected["outliers"]) - len(reasons)


def test_splits_are_stratified_disjoint_and_keep_groups_whole(dirty):
    out = dirty["out"]
    splits = {s: dataset.load_split(out, s) for s in dataset.DATA_SPLITS}
    ids = [_ids(s) for s in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    near = dirty["expected"]["near"][0]
    assert sum(bool(near & i) for i in ids) == 1  # the kept near-duplicate pair stays together
    manifest = dataset.read_manifest(out)
    for name in manifest["class_names"]:
        total = sum(manifest["counts"][s][name] for s in dataset.DATA_SPLITS)
        for s, share in (("val", 0.15), ("test", 0.15)):
            assert abs(manifest["counts"][s][name] - total * share) <= 1
    assert manifest["synthetic"] is False and manifest["image_size"] == 64
    assert set(manifest["files"]) == {"train.npz", "val.npz", "test.npz"}
    assert splits["train"].images.shape[1:] == (64, 64, 3)


def test_html_report_shows_histograms_samples_and_findings(dirty):
    page = (dirty["out"] / "report.html").read_text()
    for text in (
        "images per class",
        "Samples per class",
        "Exact duplicates (3 groups)",
        "Near duplicates (1 groups)",
        "Label conflicts (1 groups)",
        "Outliers (6)",
    ):
        assert text in page
    assert "SYNTHETIC DATA" not in page
    for png in ("samples.png", "outliers.png", "classes_train.png", "label_conflicts.png"):
        assert (dirty["out"] / png).stat().st_size > 1000


def test_stratified_split_unit():
    labels = np.repeat(np.arange(3), [20, 40, 3])
    groups = [[0, 1, 2, 3], [25, 26]]
    split = stratified_split(labels, groups, 0.15, 0.15, seed=7)
    for group in groups:
        assert len(set(split[group])) == 1
    assert np.bincount(split[labels == 1], minlength=3).tolist() == [28, 6, 6]
    assert np.bincount(split[labels == 2], minlength=3).tolist() == [1, 1, 1]
    np.testing.assert_array_equal(split, stratified_split(labels, groups, 0.15, 0.15, seed=7))
    assert not np.array_equal(split, stratified_split(labels, groups, 0.15, 0.15, seed=8))


def test_same_seed_same_dataset_and_other_seed_other_split(tmp_path):
    cfg = config(24, **{"data.synthetic_per_class": 10})
    ingest.run("default", str(tmp_path / "a"), cfg)
    ingest.run("default", str(tmp_path / "b"), cfg)
    ingest.run("default", str(tmp_path / "c"), cfg.replace({"seed": 99}))
    files = [dataset.read_manifest(tmp_path / n)["files"] for n in "abc"]
    assert files[0] == files[1]
    assert files[0]["val.npz"] != files[2]["val.npz"]


def test_synthetic_default_is_labelled_everywhere(tmp_path):
    summary = ingest.run(
        "default", str(tmp_path / "syn"), config(24, **{"data.synthetic_per_class": 6})
    )
    assert summary["synthetic"] is True
    assert dataset.read_manifest(tmp_path / "syn")["synthetic"] is True
    assert "SYNTHETIC DATA" in (tmp_path / "syn" / "report.html").read_text()
    assert metrics(tmp_path / "syn")["synthetic"] is True
    assert summary["totals"] == {"train": 32, "val": 8, "test": 8}
    assert (summary["train_images"], summary["val_images"], summary["dropped_images"]) == (32, 8, 0)


def test_medmnist_npz_ingest_records_given_splits(tmp_path):
    images, labels = [], []
    from hemaflow.data import synthetic

    images, labels = synthetic.generate(6, 28, seed=3)
    order = np.random.default_rng(0).permutation(len(labels))
    parts = np.split(order, [30, 38])
    arrays = {}
    for split, idx in zip(("train", "val", "test"), parts, strict=True):
        arrays[f"{split}_images"] = images[idx]
        arrays[f"{split}_labels"] = labels[idx].reshape(-1, 1)
    np.savez(tmp_path / "blood.npz", **arrays)
    summary = ingest.run(str(tmp_path / "blood.npz"), str(tmp_path / "ds"), config(32))
    record = metrics(tmp_path / "ds")
    assert record["given_splits"] == {"test": 10, "train": 30, "val": 8}
    assert record["warnings"] == []
    assert record["source"]["layout"] == "medmnist"
    assert sum(summary["totals"].values()) == 48


def test_classes_missing_from_a_split_are_warned_about(tmp_path):
    path = tmp_path / "tiny.npz"
    images = np.random.default_rng(1).integers(90, 200, (12, 32, 32, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.array([0] * 10 + [1] * 2))
    ingest.run(str(path), str(tmp_path / "ds"), config(32, **{"data.drop.outliers": False}))
    record = metrics(tmp_path / "ds")
    assert "class 'eosinophil' has no images in the val split" in record["warnings"]
    assert "Warning:" in (tmp_path / "ds" / "report.html").read_text()


def test_every_image_dropped_is_an_error(tmp_path):
    root = tmp_path / "flat"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (20, 200, 20)).save(root / name / "x.png")
    with pytest.raises(StageError, match="every image was dropped"):
        ingest.run(str(root), str(tmp_path / "out"), config(32))
    assert not (tmp_path / "out").exists()  # nothing half-written is published


def test_drop_policy_can_keep_everything(dirty):
    from hemaflow.data import quality
    from hemaflow.data.sources import read_folder

    loaded = read_folder(dirty["root"], 32)
    findings = quality.analyse(loaded.images, loaded.labels, 4, 6.0)
    keep_all = config(
        **{f"data.drop.{k}": False for k in ("exact_duplicates", "label_conflicts", "outliers")}
    )
    assert choose_drops(findings, loaded, keep_all) == {}
    near_too = config(**{"data.drop.near_duplicates": True})
    reasons = choose_drops(findings, loaded, near_too).values()
    assert sum(r.startswith("near duplicate of platelet/") for r in reasons) == 1


# --------------------------------------------------------------------------- command line


def test_cli_ingest_prints_a_summary(tmp_path, capsys):
    status = main(
        [
            "ingest",
            "default",
            "--out",
            str(tmp_path / "ds"),
            "--size",
            "24",
            "--set",
            "data.synthetic_per_class=5",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "train 24, val 8, test 8" in out
    assert dataset.read_manifest(tmp_path / "ds")["image_size"] == 24


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err and err.startswith("hemaflow ingest: error:")


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "hemaflow", "ingest", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "bloodmnist:SIZE" in result.stdout and "--size N" in result.stdout
