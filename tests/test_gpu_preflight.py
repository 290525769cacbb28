"""The gpu profile's own DAG on a CPU in minutes: ``hemaflow run --profile gpu --smoke``.

Five ImageNet backbones, mixed_float16, compare, tuning, warm-up then fine-tune, the top-3
ensemble and evaluation, all at 32 px on a few real pbc128 images. Without internet the
ImageNet weights cannot be fetched: the preflight falls back to random initialisation and
every output says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hemaflow.config import load_config, smoke

GPU_BACKBONES = set(load_config("gpu").model.backbones)


def test_smoke_shrinks_sizes_and_keeps_the_dag():
    gpu = load_config("gpu")
    small = smoke(gpu)
    assert small.data.image_size == 32 and small.data.max_per_class > 0
    assert small.model.weights_fallback == "random" and gpu.model.weights_fallback == "error"
    for key in ("backbones", "weights", "precision", "head"):
        assert getattr(small.model, key) == getattr(gpu.model, key), key
    assert small.compare.top_k == gpu.compare.top_k == 3
    assert small.tune.algorithm == gpu.tune.algorithm
    assert small.train.warmup_epochs >= 1 and small.train.unfreeze_layers == 40
    assert small.resources == gpu.resources and small.ensemble == gpu.ensemble
    # Both corruption suites still run, on a few corruptions each.
    assert gpu.evaluate.independent == ["all"] and 0 < len(small.evaluate.independent) <= 2
    assert 0 < len(small.evaluate.corruptions) <= 2


@pytest.mark.slow
def test_gpu_profile_preflight_runs_end_to_end(pbc_sample, tmp_path, capsys):
    from hemaflow.pipeline.cli import main

    from hemaflow.modeling import loading

    out = tmp_path / "run"
    argv = ["run", "--profile", "gpu", "--smoke", "--data", str(pbc_sample), "--out", str(out)]
    assert main([*argv, "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert "smoke preflight" in printed and "PREFLIGHT ONLY, random initialisation" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    members = metrics["model"]["members"]
    assert len(members) == 3 and len(set(members)) == 3 and set(members) <= GPU_BACKBONES
    report = (out / "report.html").read_text()
    card = next(out.rglob("model_card.md")).read_text()
    for name in members:
        assert name in report and name in card
        assert "random initialisation" in metrics["weights_fallback"][name]
    assert "initialised randomly" in card and "PREFLIGHT ONLY" in report

    ensemble = loading.read_model_manifest(out / "model")
    assert [m["backbone"] for m in ensemble["members"]] == members
    for member in ensemble["members"]:
        trained = loading.read_model_manifest(member["path"])
        m = trained["metrics"]
        assert trained["backbone"] == member["backbone"]
        assert trained["pretrained"] is True and trained["weights"] == "imagenet"
        # The warm-up then fine-tune branch ran, under float16 with loss scaling.
        assert m["phases"] == ["warmup", "finetune"], m
        assert m["warmup_epochs_run"] >= 1 and m["finetune_epochs_run"] >= 1
        assert trained["precision"] == "mixed_float16"
        assert m["optimizer"] == "LossScaleOptimizer" and m["loss_scale_optimizer"] is True
        assert "random initialisation" in trained["weights_fallback"]
    assert Path(out / "index.html").is_file()
