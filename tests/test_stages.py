"""The contract every stage keeps: one ``run`` entry point, its command's help, one logger tree."""

from __future__ import annotations

import importlib
import inspect
import logging
import subprocess
import sys
from pathlib import Path

import pytest

STAGES = {
    "ingest": ["source", "out_dir", "config"],
    "augment": ["dataset_dir", "out_dir", "config"],
    "compare": ["data_dir", "backbone", "out_dir", "config"],
    "tune": ["data_dir", "backbone", "out_dir", "config"],
    "train": ["data_dir", "backbone", "hparams", "out_dir", "config"],
    "ensemble": ["data_dir", "member_dirs", "out_dir", "config"],
    "evaluate": ["model_dir", "data_dir", "out_dir", "config"],
    "predict": ["model", "source", "out", "config"],
}
COMPONENTS = Path(__file__).resolve().parents[1] / "components"


def test_components_hold_one_module_per_stage():
    modules = {p.stem for p in COMPONENTS.glob("*.py")} - {"__init__"}
    assert modules == set(STAGES)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_has_one_run_entry_point_and_logs_under_hemaflow(stage):
    module = importlib.import_module(f"hemaflow.components.{stage}")
    assert list(inspect.signature(module.run).parameters) == STAGES[stage]
    assert isinstance(module.log, logging.Logger) and module.log.name == f"hemaflow.{stage}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_help(stage):
    result = subprocess.run(
        [sys.executable, "-m", "hemaflow", stage, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.startswith(f"usage: hemaflow {stage} ")
    assert "examples:" in result.stdout


def test_train_reads_a_tune_folder_or_a_json_file():
    from hemaflow.modeling import fitting

    assert fitting.hparams_file("runs/tune/r50") == "runs/tune/r50/hparams.json"
    assert fitting.hparams_file("gs://b/tune/r50/") == "gs://b/tune/r50/hparams.json"
    assert fitting.hparams_file("my.json") == "my.json"
    assert fitting.hparams_file("") == ""
