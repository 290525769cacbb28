"""The predict, evaluate and ensemble command lines on real images, and their errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from hemaflow.pipeline.cli import main

from hemaflow.config import CLASS_NAMES
from tests.helpers import SIZE, load_pbc_arrays, mark_complete, train_tiny, write_dataset

QUICK = [
    "--set",
    "evaluate.corruptions=[jpeg, pixelate]",
    "--set",
    "evaluate.severities=[2]",
]


@pytest.fixture(scope="module")
def model_dir(pbc128_root, tmp_path_factory):
    from hemaflow.modeling.export import export_model

    images, labels, _ = load_pbc_arrays(pbc128_root, 16)
    model, _ = train_tiny(images, labels)
    folder = tmp_path_factory.mktemp("model")
    export_model(model, folder, list(CLASS_NAMES), SIZE, {"backbone": "tiny"})
    return mark_complete(folder)


@pytest.fixture(scope="module")
def image_folder(pbc128_root, tmp_path_factory):
    """3 real images of 3 classes (as class folders) and a non-image file that is skipped."""
    root = tmp_path_factory.mktemp("images")
    for name in ("basophil", "lymphocyte", "platelet"):
        (root / name).mkdir()
        for f in sorted((pbc128_root / name).iterdir())[40:43]:
            shutil.copy2(f, root / name / f.name)
    (root / "README.txt").write_text("not an image")
    return root


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_predict_folder_single_image_and_npz(model_dir, image_folder, tmp_path, capsys):
    from hemaflow.data.sources import decode_image
    from hemaflow.modeling.loading import load_model

    out = tmp_path / "pred.csv"
    assert main(["predict", str(model_dir), str(image_folder), "--out", str(out)]) == 0
    rows = read_csv(out)
    assert len(rows) == 9 and rows[0]["file"].startswith("basophil/")
    assert list(rows[0]) == ["file", "predicted", *(f"p_{c}" for c in CLASS_NAMES)]
    first = image_folder / rows[0]["file"]
    expected = load_model(model_dir).predict(decode_image(first, SIZE)[0][None], verbose=0)[0]
    assert rows[0]["predicted"] == CLASS_NAMES[int(expected.argmax())]
    probs = [float(rows[0][f"p_{c}"]) for c in CLASS_NAMES]
    np.testing.assert_allclose(probs, expected, atol=1e-5)

    capsys.readouterr()
    assert main(["predict", str(model_dir), str(first)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(first.name + ",")

    npz = tmp_path / "imgs.npz"
    images = np.stack([decode_image(first, 48)[0]] * 2)  # other size: resized to 32
    np.savez(npz, images=images)
    assert main(["predict", str(model_dir), str(npz), "--out", str(out)]) == 0
    assert [r["file"] for r in read_csv(out)] == ["images[0]", "images[1]"]


def test_evaluate_cli_on_class_folders_and_labels_csv(model_dir, image_folder, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", str(model_dir), str(image_folder), "--out", str(out), *QUICK]) == 0
    body = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= body["accuracy"] <= 1.0 and "balanced_accuracy" in body
    assert body["test"]["count"] == 9
    support = {name: row["support"] for name, row in body["per_class"].items()}
    assert support["basophil"] == 3 and support["eosinophil"] == 0  # labels mapped by name
    assert (out / "report.html").is_file() and (out / "model_card.md").is_file()

    flat = tmp_path / "flat"
    flat.mkdir()
    lines = ["file,label"]
    for i, path in enumerate(sorted(image_folder.glob("*/*.jpg"))):
        shutil.copy2(path, flat / f"img{i}.jpg")
        lines.append(f"img{i}.jpg,{path.parent.name}")
    (flat / "labels.csv").write_text("\n".join(lines) + "\n")
    out2 = tmp_path / "eval2"
    assert main(["evaluate", str(model_dir), str(flat), "--out", str(out2), *QUICK]) == 0
    body2 = json.loads((out2 / "metrics.json").read_text())
    assert body2["accuracy"] == pytest.approx(body["accuracy"])


def test_cli_errors_are_clear_and_write_nothing(model_dir, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    text_model = tmp_path / "model.keras"
    text_model.write_text("hello")
    assert main(["predict", str(text_model), str(image_folder)]) == 1
    assert "not a Keras 3 .keras archive" in capsys.readouterr().err

    odd = tmp_path / "odd"
    shutil.copytree(image_folder, odd)
    (odd / "basophil").rename(odd / "monkey")
    assert main(["evaluate", str(model_dir), str(odd), "--out", str(out), *QUICK]) == 1
    assert "['monkey'] are not among the model's classes" in capsys.readouterr().err

    bad_csv = tmp_path / "badcsv"
    bad_csv.mkdir()
    (bad_csv / "labels.csv").write_text("file,label\nmissing.jpg,basophil\n")
    assert main(["evaluate", str(model_dir), str(bad_csv), "--out", str(out)]) == 1
    assert "labels.csv:2: image file 'missing.jpg' not found" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(model_dir), str(empty)]) == 1
    assert "no image files" in capsys.readouterr().err
    assert not out.exists()


def test_ensemble_cli(model_dir, pbc128_root, tmp_path, capsys):
    val = load_pbc_arrays(pbc128_root, 4, offset=20)
    data = write_dataset(tmp_path / "data", {"val": val})
    out = tmp_path / "ens"
    args = ["ensemble", str(data), "--member", str(model_dir), "--member", str(model_dir)]
    assert main([*args, "--out", str(out)]) == 0
    assert "temperature" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "model" and len(manifest["members"]) == 2
