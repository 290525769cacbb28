"""The compiled pipeline: every profile compiles, the IR carries the profile's scheduling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hemaflow.pipeline import compiler
from hemaflow.pipeline.cli import main

from hemaflow.config import available_profiles, from_json, load_config

STAGES = {
    "configure",
    "ingest",
    "balance-and-augment",
    "compare",
    "select-top-k",
    "tune",
    "train",
    "ensemble",
    "evaluate",
}
# A profile with a time budget trains the plan's members instead of one model per backbone.
BUDGETED_STAGES = (STAGES - {"train"}) | {"plan", "plan-config", "train-member"}


class Compiled(dict):
    """Compiled IR by (profile, target), compiled on first use and kept for the module."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.paths: dict[tuple[str, str], Path] = {}

    def __missing__(self, key: tuple[str, str]) -> dict:
        profile, target = key
        path = self.root / f"{profile}-{target}.yaml"
        self.paths[key] = compiler.compile_pipeline(load_config(profile), path, target)
        self[key] = compiler.load_ir(path)
        return self[key]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Compiled:
    return Compiled(tmp_path_factory.mktemp("compiled"))


def executors(ir: dict) -> dict[str, dict]:
    return {k.removeprefix("exec-"): v for k, v in ir["deploymentSpec"]["executors"].items()}


def all_tasks(ir: dict) -> dict[str, dict]:
    """Every task spec by name, in the root DAG and in the nested DAGs."""
    tasks = dict(ir["root"]["dag"]["tasks"])
    for comp in ir["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


@pytest.mark.parametrize("profile", available_profiles())
def test_every_profile_compiles_with_every_stage(compiled, profile):
    for target in ("kubeflow", "vertex") if profile == "gpu" else ("kubeflow",):
        ir = compiled[profile, target]
        config = load_config(profile)
        expected = BUDGETED_STAGES if config.budget.minutes else STAGES
        assert set(executors(ir)) == expected, profile
        params = ir["root"]["inputDefinitions"]["parameters"]
        assert set(params) == {"config"}
        carried = from_json(params["config"]["defaultValue"])
        assert carried == config
        assert carried.profile == profile
        assert carried.model.backbones == list(config.model.backbones)
        assert carried.compare.top_k == config.compare.top_k
        assert carried.train.epochs == config.train.epochs
        assert carried.tune.max_trials == config.tune.max_trials
        assert set(ir["root"]["outputDefinitions"]["artifacts"]) == {
            "model",
            "metrics",
            "report",
            "evaluation",
        }
        for name, ex in executors(ir).items():
            assert ex["container"]["image"] == config.pipeline.image, name


def test_dag_wiring_fans_out_and_collects(compiled):
    ir = compiled["quickstart", "kubeflow"]
    tasks = all_tasks(ir)
    root = ir["root"]["dag"]["tasks"]
    assert root["ingest"]["dependentTasks"] == ["configure"]
    assert set(root["balance-and-augment"]["dependentTasks"]) == {"configure", "ingest"}
    assert set(root["evaluate"]["dependentTasks"]) >= {"select-and-train", "balance-and-augment"}
    loops = {n: t for n, t in tasks.items() if "parameterIterator" in t}
    assert len(loops) == 2
    iterators = sorted(t["parameterIterator"]["items"]["inputParameter"] for t in loops.values())
    assert any("backbones" in i for i in iterators)
    assert any("select-top-k" in i for i in iterators)
    # select-top-k collects the compare results; ensemble collects the trained models.
    select = tasks["select-top-k"]["inputs"]["parameters"]["results"]
    assert "compare" in json.dumps(select) or "for-loop" in json.dumps(select)
    members = tasks["ensemble"]["inputs"]["artifacts"]["members"]
    assert "for-loop" in json.dumps(members)
    assert tasks["train"]["inputs"]["artifacts"]["hparams"]["taskOutputArtifact"] == {
        "outputArtifactKey": "hparams",
        "producerTask": "tune",
    }


def test_gpu_profile_scheduling_is_in_the_ir(compiled):
    config = load_config("gpu")
    train = config.resources.train
    ir = compiled["gpu", "kubeflow"]
    ex = executors(ir)
    res = ex["train"]["container"]["resources"]
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert int(res["accelerator"]["resourceCount"]) == train.accelerator_count
    assert res["resourceCpuRequest"] == train.cpu
    assert res["resourceMemoryRequest"] == train.memory
    assert res["resourceMemoryLimit"] == train.memory_limit
    assert "accelerator" not in ex["ingest"]["container"]["resources"]
    assert (
        ex["ingest"]["container"]["resources"]["resourceCpuLimit"]
        == config.resources.data.cpu_limit
    )

    k8s = ir["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for stage in ("compare", "tune", "train", "ensemble", "evaluate"):
        spec = k8s[f"exec-{stage}"]
        assert spec["nodeSelector"]["labels"] == train.node_selector
        assert spec["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    assert "exec-ingest" not in k8s

    tasks = all_tasks(ir)
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == train.retries
    assert tasks["train"]["retryPolicy"]["backoffDuration"] == train.retry_backoff
    assert tasks["evaluate"]["retryPolicy"]["maxRetryCount"] == config.resources.evaluate.retries
    assert tasks["select-top-k"]["retryPolicy"]["maxRetryCount"] == config.resources.data.retries
    assert "retryPolicy" not in all_tasks(compiled["cpu", "kubeflow"])["train-member"]
    assert all(t["cachingOptions"].get("enableCache") for n, t in tasks.items() if n in STAGES)


def test_vertex_target_uses_machine_enums_and_no_kubernetes_spec(compiled):
    ir = compiled["gpu", "vertex"]
    res = executors(ir)["train"]["container"]["resources"]
    assert res["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4"
    assert "platforms" not in ir


def test_cpu_profiles_ask_for_no_accelerator(compiled):
    for profile in ("quickstart", "cpu"):
        for name, ex in executors(compiled[profile, "kubeflow"]).items():
            assert "accelerator" not in ex["container"]["resources"], (profile, name)
        assert "platforms" not in compiled[profile, "kubeflow"]


def test_caching_off_and_overrides_are_carried(tmp_path):
    config = load_config("quickstart", overrides={"pipeline.caching": False, "train.epochs": 5})
    ir = compiler.load_ir(compiler.compile_pipeline(config, tmp_path / "p.yaml"))
    tasks = all_tasks(ir)
    assert set(tasks) >= STAGES
    assert not any(tasks[n]["cachingOptions"].get("enableCache") for n in STAGES)
    carried = from_json(ir["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"])
    assert carried.train.epochs == 5
    assert carried == config
    assert not carried.pipeline.caching


def test_compile_is_deterministic(compiled, tmp_path):
    compiled["gpu", "kubeflow"]
    again = tmp_path / "again.yaml"
    assert main(["compile", "--profile", "gpu", "--out", str(again)]) == 0
    assert again.read_bytes() == compiled.paths["gpu", "kubeflow"].read_bytes()


@pytest.mark.parametrize(("profile", "target"), compiler.GOLDEN)
def test_golden_structure(compiled, profile, target):
    """The compiled structure matches pipeline/golden; regenerate with
    ``python -m hemaflow.pipeline.compiler --golden`` (or HEMAFLOW_UPDATE_GOLDEN=1) after a wanted change."""
    path = compiler.golden_path(profile, target)
    text = compiler.golden_text(compiled[profile, target], profile, target)
    if os.environ.get("HEMAFLOW_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"{path} missing: python -m hemaflow.pipeline.compiler --golden"
    assert text == path.read_text(), (
        f"compiled structure of {profile}/{target} drifted from {path}; if intended, "
        "regenerate with: python -m hemaflow.pipeline.compiler --golden"
    )


def test_load_ir_refuses_other_yaml(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(ValueError, match="not a compiled KFP pipeline"):
        compiler.load_ir(other)


def test_compile_cli_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compile", "--profile", "nope", "--out", str(tmp_path / "p.yaml")])
    assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert main(["compile", "--set", "compare.top_k=0", "--out", str(tmp_path / "p.yaml")]) == 1
    assert "top_k" in capsys.readouterr().err
    assert not Path(tmp_path / "p.yaml").exists()
