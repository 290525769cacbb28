"""A compiled pipeline carries its whole config: no task reads a profile file.

Each test compiles a config, then makes the installed quickstart profile differ (a folder of
site profiles named by HEMAFLOW_PROFILES, which the loader searches before the built-in
ones) and checks that the tasks of the compiled file got the compiled values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from hemaflow.pipeline import compiler, steps, tasks

from hemaflow import config as cfg

#: kfp.local warns that the project image has no "python" in its name (it is a Python image)
#: and that it ignores resource requests.
QUIET_IMAGE = pytest.mark.filterwarnings(
    "ignore:.*non-Python base image", "ignore:.*have no effect in the current local runner"
)

#: What the compiled pipeline is built for: quickstart, shrunk to a short run.
COMPILED = {
    "seed": 7,
    "data.image_size": 24,
    "data.synthetic_per_class": 12,
    "augment.copies": 0,
    "model.backbones": ["small_cnn"],
    "compare.top_k": 1,
    "compare.epochs": 1,
    "tune.max_trials": 1,
    "train.epochs": 1,
    "evaluate.corruptions": ["gaussian_noise"],
    "evaluate.severities": [1],
    "evaluate.max_images": 16,
}

#: The installed quickstart after compiling: every value above different.
SITE = {
    "seed": 99,
    "data.image_size": 32,
    "model.backbones": ["small_cnn", "resnet_mini"],
    "compare.top_k": 2,
    "train.epochs": 3,
    "evaluate.corruptions": ["gaussian_blur", "jpeg"],
    "evaluate.severities": [2, 3],
    "evaluate.max_images": 8,
}


def install_site_quickstart(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``quickstart`` load as the built-in profile with :data:`SITE` laid over it."""
    raw = yaml.safe_load((cfg.PROFILE_DIR / "quickstart.yaml").read_text())
    for key, value in SITE.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "quickstart.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv(cfg.PROFILES_ENV, str(folder))
    assert cfg.load_config("quickstart").seed == SITE["seed"]


@pytest.fixture
def compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[cfg.Config, Path]:
    """(config, compiled file); the installed quickstart differs from the config afterwards."""
    config = cfg.load_config("quickstart", overrides=COMPILED)
    path = compiler.compile_pipeline(config, tmp_path / "pipeline.yaml")
    install_site_quickstart(tmp_path / "site-profiles", monkeypatch)
    return config, path


def compiled_default(path: Path) -> str:
    return compiler.load_ir(path)["root"]["inputDefinitions"]["parameters"]["config"][
        "defaultValue"
    ]


def test_every_task_takes_the_config_and_nothing_of_a_profile(compiled):
    _, path = compiled
    ir = compiler.load_ir(path)
    for name, comp in ir["components"].items():
        params = set(comp.get("inputDefinitions", {}).get("parameters", {}))
        assert not params & {"profile", "overrides"}, name
        if "executorLabel" in comp:
            assert "config" in params, name


def test_task_config_is_the_compiled_one_without_reading_a_profile(compiled, monkeypatch):
    config, path = compiled

    def no_profiles(name: str) -> None:
        pytest.fail(f"a task looked up profile {name!r}")

    monkeypatch.setattr(cfg, "profile_path", no_profiles)
    checked, backbones = tasks.configure(compiled_default(path))
    assert backbones == ["small_cnn"]
    carried = steps.load(checked)
    assert carried == config
    assert carried.seed == COMPILED["seed"] and carried.train.epochs == COMPILED["train.epochs"]


def single_task(ir: dict, name: str) -> str:
    """One task of a compiled pipeline as a component file of its own (same executor)."""
    comp = ir["components"][f"comp-{name}"]
    label = comp["executorLabel"]
    spec = {
        "pipelineInfo": {"name": name},
        "root": comp,
        "components": {},
        "deploymentSpec": {"executors": {label: ir["deploymentSpec"]["executors"][label]}},
        "schemaVersion": ir["schemaVersion"],
        "sdkVersion": ir["sdkVersion"],
    }
    return yaml.safe_dump(spec)


@QUIET_IMAGE
def test_compiled_configure_task_runs_on_the_compiled_config(compiled, tmp_path):
    """The compiled configure executor, run by kfp.local in a subprocess that sees the site
    profile, hands on the compiled config."""
    from kfp import components, local

    config, path = compiled
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        enable_caching=False,
        raise_on_error=True,
    )
    configure = components.load_component_from_text(
        single_task(compiler.load_ir(path), "configure")
    )
    task = configure(config=compiled_default(path))
    assert task.outputs["backbones"] == ["small_cnn"]
    assert cfg.from_json(task.outputs["config"]) == config


@pytest.mark.slow
@QUIET_IMAGE
def test_compiled_pipeline_runs_with_its_compiled_config(compiled, tmp_path):
    """The whole compiled file through kfp.local: the tasks ran on the compiled values."""
    from kfp import components, local

    config, path = compiled
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        enable_caching=False,
        raise_on_error=True,
    )
    run = components.load_component_from_file(str(path))()
    metrics = json.loads((Path(run.outputs["evaluation"].path) / "metrics.json").read_text())
    assert metrics["data"]["image_size"] == COMPILED["data.image_size"]
    assert metrics["corruptions"] == COMPILED["evaluate.corruptions"]
    assert metrics["severities"] == COMPILED["evaluate.severities"]
    assert metrics["max_images"] == COMPILED["evaluate.max_images"]
    assert metrics["model"]["image_size"] == config.data.image_size


def test_site_profiles_reach_a_stage_container_read_only(tmp_path):
    from hemaflow.pipeline import docker_run

    site = tmp_path / "site"
    site.mkdir()
    env = {cfg.PROFILES_ENV: f"{site}{os.pathsep}{tmp_path / 'missing'}"}
    spec = docker_run.plan_container("ingest", ["--profile", "lab"], env=env)
    assert spec.volumes == {str(site): {"bind": str(site), "mode": "ro"}}
    assert spec.environment == {cfg.PROFILES_ENV: str(site)}
    assert docker_run.plan_container("ingest", [], env={}).environment == {}
