"""The Kubernetes manifests: rendered with kustomize and validated against the API schemas.

Rendering uses ``kubectl kustomize`` (or ``kustomize build``) where installed. Without
either, every resource file of the base is validated as written and the overlay's patches
are checked to point at paths that exist, which catches the same schema errors but not a
kustomize syntax error.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from hemaflow.config import load_config

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
K8S_VERSION = "1.31"
KUSTOMIZATIONS = [MANIFESTS / "base", MANIFESTS / "overlays" / "gke-gpu"]


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(folder: Path) -> list[dict]:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kubectl nor kustomize installed; see test_resource_files_validate")
    out = subprocess.run([*command, str(folder)], check=True, capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_rendered_manifests_are_valid(folder):
    docs = render(folder)
    assert {d["kind"] for d in docs} == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "CronJob",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "hemaflow", doc["kind"]


def test_overlay_wires_submitter_gpu_pool_and_identity(tmp_path):
    docs = by_kind(render(MANIFESTS / "overlays" / "gke-gpu"))
    cron = docs["CronJob"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "us-docker.pkg.dev/my-project/hemaflow/hemaflow-gpu:0.1.0"
    assert container["command"] == ["hemaflow"] and container["args"][0] == "submit"
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    configmap = docs["ConfigMap"]
    # generated name (with hash) is what the CronJob references, in env and volume alike
    assert container["envFrom"][0]["configMapRef"]["name"] == configmap["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    token = volumes["kfp-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    sa = docs["ServiceAccount"]["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert sa.endswith("@my-project.iam.gserviceaccount.com")
    binding = docs["RoleBinding"]
    assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == "hemaflow-submitter"
    verbs = {r: set(rule["verbs"]) for rule in docs["Role"]["rules"] for r in rule["resources"]}
    assert {"create", "get", "list"} <= verbs["runs"] and "create" in verbs["experiments"]
    assert configmap["data"]["PIPELINE_ROOT"].startswith("gs://")

    # The GPU pool values are a valid hemaflow config, and they reach the compiled pipeline.
    config_file = tmp_path / "hemaflow.yaml"
    config_file.write_text(configmap["data"]["hemaflow.yaml"])
    config = load_config(path=config_file)
    assert config.profile == "gpu"
    train = config.resources.train
    assert train.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert train.tolerations[0].key == "nvidia.com/gpu"
    from hemaflow.pipeline import compiler

    ir = compiler.load_ir(compiler.compile_pipeline(config, tmp_path / "p.yaml"))
    k8s = ir["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert k8s["nodeSelector"]["labels"] == train.node_selector
    resources = ir["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"


def test_resource_files_validate():
    """Each base resource file is schema-valid as written (no kustomize needed)."""
    base = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    for name in base["resources"]:
        for doc in yaml.safe_load_all((MANIFESTS / "base" / name).read_text()):
            doc.setdefault("metadata", {}).setdefault("namespace", base["namespace"])
            if doc["kind"] == "Namespace":
                doc["metadata"].pop("namespace")
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for key, file in _config_files(base):
        config = load_config(path=MANIFESTS / "base" / file)
        assert config.profile == "cpu", key


def test_overlay_patches_point_at_existing_paths():
    overlay = yaml.safe_load(
        (MANIFESTS / "overlays" / "gke-gpu" / "kustomization.yaml").read_text()
    )
    docs = []
    base = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    for name in base["resources"]:
        docs.extend(yaml.safe_load_all((MANIFESTS / "base" / name).read_text()))
    for patch in overlay["patches"]:
        target = patch["target"]
        (doc,) = [
            d
            for d in docs
            if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
        ]
        for op in yaml.safe_load(patch["patch"]):
            node = doc
            for part in op["path"].strip("/").split("/"):
                key = part.replace("~1", "/").replace("~0", "~")
                assert key in node, f"{target['kind']}/{target['name']}: no {op['path']}"
                node = node[key]
    for name, file in _config_files(overlay):
        assert (MANIFESTS / "overlays" / "gke-gpu" / file).is_file(), name


def _config_files(kustomization: dict) -> list[tuple[str, str]]:
    out = []
    for gen in kustomization.get("configMapGenerator", []):
        for entry in gen.get("files", []):
            key, _, file = entry.partition("=")
            out.append((key, file or key))
    return out
