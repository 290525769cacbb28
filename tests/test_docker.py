"""The project image: how it is planned (no engine needed) and built, run and pushed (real engine).

Tests marked ``docker`` need a Docker engine and a local base image with python3, venv and pip
(``.ci/services.sh`` makes both without a registry: ``debootstrap`` + ``docker import``).
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from hemaflow.pipeline import docker_run, image
from hemaflow.pipeline.commands.component import split_runner_options

import hemaflow

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("HEMAFLOW_TEST_BASE_IMAGE", "hemaflow-base:bookworm")
TEST_REPOSITORY = "hemaflow-test"
BUILDER_LABEL = "io.hemaflow.stage=builder"  # docker/Dockerfile's builder stage

# --------------------------------------------------------------------------- no engine needed


def test_tags_carry_version_revision_and_latest():
    assert image.image_tags("0.1.0", "abc123") == [
        "hemaflow:0.1.0",
        "hemaflow:abc123",
        "hemaflow:latest",
    ]
    tags = image.image_tags(
        "0.1.0", None, tag="registry.local:5000/team/hemaflow-gpu:rc1", gpu=True
    )
    assert tags == [
        "registry.local:5000/team/hemaflow-gpu:rc1",
        "registry.local:5000/team/hemaflow-gpu:0.1.0",
        "registry.local:5000/team/hemaflow-gpu:latest",
    ]
    assert image.image_tags("0.1.0", "abc", gpu=True)[0] == "hemaflow:0.1.0-gpu"
    assert image.split_reference("localhost:5000/x") == ("localhost:5000/x", None)


def test_pip_settings_reach_the_build_without_local_file_indexes():
    env = {"HTTPS_PROXY": "http://proxy:3128", "PIP_INDEX_URL": "https://mirror.example/simple"}
    config = {"extra-index-url": "file:///opt/pypi/simple https://extra.example/simple"}
    args = image.pip_build_args(env, config)
    assert args == {
        "HTTPS_PROXY": "http://proxy:3128",
        "PIP_INDEX_URL": "https://mirror.example/simple",
        "PIP_EXTRA_INDEX_URL": "https://extra.example/simple",
    }
    assert image.pip_build_args({}, {"extra-index-url": "file:///opt/pypi/simple"}) == {}


def test_build_context_holds_the_package_and_the_ca_but_not_the_rest(tmp_path):
    ca = tmp_path / "proxy-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n")
    context = image.build_context(REPO, image.CPU_DOCKERFILE, ca)
    with tarfile.open(fileobj=context) as archive:
        names = set(archive.getnames())
        assert archive.extractfile(image.CA_IN_CONTEXT).read() == ca.read_bytes()
    assert {"pyproject.toml", "docker/Dockerfile", "docker/constraints.txt"} <= names
    assert {"hemaflow/storage/__init__.py", "components/ingest.py", "pipeline/cli.py"} <= names
    assert not any(n.startswith((".venv", ".git/", "tests/")) for n in names)
    with pytest.raises(image.ImageError, match="nope.pem: CA certificate file not found"):
        image.build_context(REPO, image.CPU_DOCKERFILE, tmp_path / "nope.pem")


def test_stream_errors_raise_with_the_engine_message():
    lines: list[str] = []
    events = [
        {"stream": "Step 1/2 : FROM base\n"},
        {"status": "Pushing", "progressDetail": {}, "id": "abc"},
        {"errorDetail": {"message": "connection refused"}, "error": "connection refused"},
    ]
    with pytest.raises(image.ImageError, match="docker push of x failed: connection refused"):
        image.check_stream(iter(events), lines.append, "docker push of x")
    assert lines[0] == "Step 1/2 : FROM base"
    assert image.check_stream(iter(events[:2]), lines.append, "ok") == events[:2]


def test_container_plan_mounts_inputs_read_only_and_output_parents_writable(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    settings = tmp_path / "my.yaml"
    settings.write_text("train: {epochs: 1}\n")
    out = tmp_path / "runs" / "ds"
    spec = docker_run.plan_container(
        "ingest",
        [str(data), "--out", str(out), f"--config={settings}", "--set", f"data.source={data}"],
        env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443", "SECRET_TOKEN": "x"},
    )
    assert spec.command == [
        "ingest",
        str(data),
        "--out",
        str(out),
        f"--config={settings}",
        "--set",
        f"data.source={data}",
    ]
    assert spec.volumes == {
        str(data): {"bind": str(data), "mode": "ro"},
        str(out.parent): {"bind": str(out.parent), "mode": "rw"},
        str(settings): {"bind": str(settings), "mode": "ro"},
    }
    assert out.parent.is_dir()
    assert spec.environment == {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443"}
    assert spec.network_mode == "host"
    assert spec.user == f"{os.getuid()}:{os.getgid()}"

    gs = docker_run.plan_container("train", ["gs://b/data", "--out", "gs://b/model"], env={})
    assert gs.command == ["train", "gs://b/data", "--out", "gs://b/model"]
    assert gs.volumes == {} and gs.network_mode is None

    to_stdout = docker_run.plan_container("predict", ["--out=-", "m"], env={})
    assert to_stdout.command == ["predict", "--out=-", "m"] and to_stdout.volumes == {}


def test_a_key_file_is_mounted_read_only_and_never_put_in_the_environment(tmp_path):
    key = tmp_path / "sa.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": "SECRET"}))
    spec = docker_run.plan_container(
        "evaluate", [], env={"GOOGLE_APPLICATION_CREDENTIALS": str(key)}
    )
    assert spec.volumes[str(key)] == {"bind": docker_run.CREDENTIALS_IN_CONTAINER, "mode": "ro"}
    assert spec.environment["GOOGLE_APPLICATION_CREDENTIALS"] == docker_run.CREDENTIALS_IN_CONTAINER
    assert "SECRET" not in json.dumps(spec.environment)
    with pytest.raises(FileNotFoundError, match="GOOGLE_APPLICATION_CREDENTIALS=/nope.json"):
        docker_run.plan_container("x", [], env={"GOOGLE_APPLICATION_CREDENTIALS": "/nope.json"})


def test_runner_options_may_follow_the_stage():
    args, docker, name = split_runner_options(
        ["default", "--out", "/o", "--docker", "--image", "img:1"], False, None
    )
    assert (args, docker, name) == (["default", "--out", "/o"], True, "img:1")
    assert split_runner_options(["--image=a:b"], False, None) == ([], False, "a:b")
    with pytest.raises(ValueError, match="--image: needs an image name"):
        split_runner_options(["--image"], False, None)


# --------------------------------------------------------------------------- real engine


@pytest.fixture(scope="session")
def engine():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine answers ({exc}); start dockerd (.ci/services.sh does)")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(
            f"base image {BASE_IMAGE} missing; make it with "
            "'. .ci/services.sh && hf_build_base_image' (no registry needed)"
        )
    return client


def _proxy_ca() -> Path | None:
    """This machine's CA bundle, which its TLS-intercepting proxy needs (as pip uses it)."""
    for candidate in (os.environ.get("PIP_CERT"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def project_image(engine):
    """The project image built on the local base image, removed at the end of the session.

    Every revision gets its own tag and Docker keeps the builder stage as cache, so what a
    build leaves behind is never replaced by the next one: at about 3.5 GB a build, a few test
    runs would fill the disk.
    """
    lines: list[str] = []
    image_id, tags = image.build_image(
        tag=f"{TEST_REPOSITORY}:ci",
        base_image=BASE_IMAGE,
        ca_cert=_proxy_ca(),
        log=lines.append,
        client=engine,
    )
    assert any("Step" in line for line in lines), "the build log is streamed"
    yield tags[0]
    engine.images.remove(image_id, force=True)  # every tag, and its untagged layers
    assert engine.images.list(all=True, filters={"label": BUILDER_LABEL}), (
        "the builder stage carries its label (else the prune below would miss it)"
    )
    engine.images.prune(filters={"dangling": True, "label": BUILDER_LABEL})
    assert not engine.images.list(name=TEST_REPOSITORY), "no test image is left behind"
    assert not engine.images.list(all=True, filters={"label": BUILDER_LABEL}), (
        "no builder stage is left behind"
    )


def _run(engine, image_ref: str, command: list[str], **kwargs) -> tuple[int, str]:
    container = engine.containers.run(image_ref, command=command, detach=True, **kwargs)
    try:
        code = container.wait(timeout=300)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


@pytest.mark.docker
@pytest.mark.slow
def test_image_is_labelled_non_root_healthy_and_free_of_the_build_ca(engine, project_image):
    attrs = engine.images.get(project_image).attrs
    config = attrs["Config"]
    assert config["User"] == "1000:1000"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == hemaflow.__version__
    assert labels["org.opencontainers.image.revision"] == (image.git_revision() or "unknown")
    health = config["Healthcheck"]["Test"]
    assert health[0] == "CMD" and "import" in " ".join(health)

    code, out = _run(engine, project_image, health[1:])
    assert code == 0, out
    code, out = _run(engine, project_image, ["sh", "-c", "test ! -e /tmp/build-ca && id -u"])
    assert (code, out.strip()) == (0, "1000")
    history = json.dumps(engine.api.history(project_image))
    assert "BEGIN CERTIFICATE" not in history and "build-ca.pem" not in history
    # KFP's launchers replace the command with `sh -c ...` running python3 with kfp:
    code, out = _run(
        engine, project_image, ["sh", "-c", "python3 -c 'import kfp, hemaflow.pipeline.cli'"]
    )
    assert code == 0, out
    code, out = _run(engine, project_image, ["--version"])
    assert (code, out.strip()) == (0, f"hemaflow {hemaflow.__version__}")


@pytest.mark.docker
@pytest.mark.slow
def test_a_stage_runs_in_the_image_with_outputs_on_the_host(engine, project_image, tmp_path):
    from hemaflow.pipeline.cli import main

    out = tmp_path / "work" / "ds"
    code = main(
        [
            "component",
            "run",
            "ingest",
            "default",
            "--out",
            str(out),
            "--set",
            "data.synthetic_per_class=8",
            "--docker",
            "--image",
            project_image,
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(sum(manifest["counts"][s].values()) for s in ("train", "val", "test")) == 64
    assert (out / "_COMPLETE").exists() and (out / "train.npz").stat().st_size > 0
    assert out.stat().st_uid == os.getuid(), "outputs belong to the calling user"


@pytest.mark.docker
def test_a_failing_build_is_reported_loudly(engine, tmp_path):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nRUN echo compiling && exit 3\n"
    )
    lines: list[str] = []
    with pytest.raises(image.ImageError, match="returned a non-zero code: 3") as err:
        image.build_image(tag=f"{TEST_REPOSITORY}:broken", root=tmp_path, log=lines.append)
    assert "compiling" in str(err.value), "the error carries the end of the build log"
    with pytest.raises(image.ImageError, match="no such Dockerfile"):
        image.build_image(tag=f"{TEST_REPOSITORY}:none", root=tmp_path / "docker", log=lines.append)


@pytest.mark.docker
def test_push_to_an_unreachable_registry_fails_loudly(engine):
    reference = "127.0.0.1:9/hemaflow-test:unreachable"
    base = engine.images.get(BASE_IMAGE)
    base.tag("127.0.0.1:9/hemaflow-test", "unreachable")
    try:
        with pytest.raises(image.ImageError, match=r"docker push of 127\.0\.0\.1:9/.* failed"):
            image.push_image(reference, log=lambda _line: None, client=engine)
    finally:
        engine.images.remove(reference)


def test_cli_reports_a_push_error_in_one_line(monkeypatch, capsys):
    from hemaflow.pipeline.cli import main

    def fake_build(**kwargs):
        return "sha256:0", ["hemaflow:0.1.0"]

    def failing_push(reference, log=print, client=None):
        raise image.ImageError(f"docker push of {reference} failed: denied")

    monkeypatch.setattr(image, "build_image", fake_build)
    monkeypatch.setattr(image, "push_image", failing_push)
    assert main(["image", "build", "--push"]) == 1
    assert (
        "hemaflow image: error: docker push of hemaflow:0.1.0 failed: denied"
        in capsys.readouterr().err
    )


@pytest.mark.docker
@pytest.mark.slow
def test_quickstart_pipeline_runs_with_the_docker_runner(project_image, tmp_path):
    from hemaflow.pipeline.cli import main

    from hemaflow.modeling.loading import read_model_manifest

    out = tmp_path / "out"
    args = ["run", "--runner", "docker", "--out", str(out), "--no-cache"]
    # One backbone, one trial, few images: every task runs in a container, quickly.
    small = [
        f"pipeline.image={project_image}",
        "model.backbones=[small_cnn]",
        "compare.top_k=1",
        "tune.max_trials=1",
        "data.synthetic_per_class=16",
        "evaluate.severities=[1]",
    ]
    assert main([*args, *(x for item in small for x in ("--set", item))]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "bmk_accuracy", "corrupted_accuracy", "ece"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert read_model_manifest(str(out / "model"))["kind"] == "model"
    assert (out / "report.html").stat().st_size > 1000


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("HEMAFLOW_TEST_GPU_IMAGE") != "1",
    reason="the GPU image is about 8 GB and downloads the CUDA wheels: "
    "set HEMAFLOW_TEST_GPU_IMAGE=1 to build it",
)
def test_gpu_image_builds_and_runs_a_stage_on_cpu(engine, tmp_path):
    """docker/Dockerfile.gpu: TensorFlow with its CUDA wheels imports, and a stage runs."""
    image_id, tags = image.build_image(
        gpu=True,
        tag=f"{TEST_REPOSITORY}:ci-gpu",
        base_image=BASE_IMAGE,
        ca_cert=_proxy_ca(),
        log=lambda line: None,
        client=engine,
    )
    try:
        probe = "import nvidia.cudnn, tensorflow as tf; print(tf.sysconfig.get_build_info()['cuda_version'])"
        code, out = _run(engine, tags[0], ["python3", "-c", probe])
        assert code == 0 and out.strip().splitlines()[-1].startswith("12."), out
        code, out = _run(
            engine,
            tags[0],
            [
                "sh",
                "-c",
                "hemaflow ingest default --out /tmp/ds --set data.synthetic_per_class=6"
                " && test -f /tmp/ds/_COMPLETE",
            ],
        )
        assert code == 0, out
    finally:
        engine.images.remove(image_id, force=True)
        engine.images.prune(filters={"dangling": True, "label": BUILDER_LABEL})
