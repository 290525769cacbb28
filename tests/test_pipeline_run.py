"""``hemaflow run``: the whole DAG through kfp.local's SubprocessRunner, on real stages.

The end-to-end runs are slow (every stage trains or scores); the checks of bad input and of
the local source handling are fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hemaflow.pipeline.cli import main
from hemaflow.pipeline.runners import local_source, resolve_source

from hemaflow.config import load_config


def check_outputs(out: Path) -> dict:
    """The --out folder holds a model that loads and predicts, sane metrics and a report."""
    from hemaflow.modeling.loading import load_model, read_model_manifest

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "bmk_accuracy", "corrupted_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert 0.0 <= metrics["ece"] <= 1.0
    manifest = read_model_manifest(str(out / "model"))
    assert manifest["kind"] == "model"
    assert len(manifest["class_names"]) == 8
    model = load_model(str(out / "model"))
    size = manifest["image_size"]
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    probs = np.asarray(model.predict(images, verbose=0))
    assert probs.shape == (3, 8)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    html = (out / "report.html").read_text()
    assert html.lstrip().lower().startswith(("<!doctype html", "<html"))
    assert "</html>" in html.lower() and len(html) > 1000
    return metrics


@pytest.mark.slow
def test_run_quickstart_on_generated_data(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed and str(out / "model") in printed
    metrics = check_outputs(out)
    # 8 separable synthetic classes: clearly above chance (0.125) even after 2 epochs.
    assert metrics["accuracy"] > 0.2
    assert (out / "kfp").is_dir()


@pytest.mark.slow
def test_run_on_a_small_real_sample(pbc_sample, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--data", str(pbc_sample), "--out", str(out), "--set", "compare.top_k=1"]
    assert main(args) == 0
    metrics = check_outputs(out)
    assert metrics["accuracy"] > 1 / 8


def test_bad_input_stops_before_the_run(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "data source not found" in capsys.readouterr().err
    assert main(["run", "--set", "compare.top_k=3", "--out", str(out)]) == 1
    assert "cannot select the top 3 of 2" in capsys.readouterr().err
    assert main(["run", "--set", "model.backbones=[small_cnn, vgg99]", "--out", str(out)]) == 1
    assert "unknown backbone(s) 'vgg99'" in capsys.readouterr().err
    assert not out.exists()


def test_local_sources_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cells").mkdir()
    config = resolve_source(load_config(overrides={"data.source": "cells"}))
    assert config.data.source == str(tmp_path / "cells")
    assert local_source("default") is None
    assert local_source("bloodmnist:64") is None
    assert local_source("gs://bucket/cells") is None
