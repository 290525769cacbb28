"""Submission and schedules, up to the request each backend would receive.

Kubeflow: kfp.Client talks to a local HTTP server that records every request. Vertex: the
aiplatform SDK builds its real request objects; the GAPIC client call that would send them
is intercepted. No network, no cluster.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from hemaflow.pipeline import compiler, dag, schedule
from hemaflow.pipeline.cli import main
from hemaflow.pipeline.submit import SubmitError, submit

from hemaflow.config import ConfigError, from_json, load_config

QUICK = {"pipeline.pipeline_root": "gs://bucket/root"}
VERTEX = "--backend vertex --project p --pipeline-root gs://b/r"


class Recorder:
    """A fake KFP v2beta1 API: records requests, answers like the real one, or fails."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_status = 0
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                recorder.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "body": json.loads(body) if body else None,
                    }
                )
                status, answer = recorder.answer(self.command, self.path)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, method: str, path: str) -> tuple[int, dict]:
        if self.fail_status and "healthz" not in path:
            return self.fail_status, {"error": "denied by test", "code": 7}
        if path.startswith("/apis/v2beta1/experiments") and method == "POST":
            return 200, {"experiment_id": "exp-1", "display_name": "hemaflow"}
        if path.startswith("/apis/v2beta1/runs") and method == "POST":
            return 200, {"run_id": "run-123", "display_name": "r1"}
        if path.startswith("/apis/v2beta1/recurringruns") and method == "POST":
            return 200, {"recurring_run_id": "rr-1", "display_name": "nightly"}
        if path.startswith("/apis/v2beta1/recurringruns") and method == "GET":
            return 200, {
                "recurringRuns": [
                    {
                        "recurring_run_id": "rr-1",
                        "display_name": "nightly",
                        "trigger": {"cron_schedule": {"cron": "0 0 3 * * 1"}},
                    }
                ]
            }
        return 200, {}

    def posts(self, prefix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"].startswith(prefix)]


@pytest.fixture
def kfp_server():
    recorder = Recorder()
    yield recorder
    recorder.server.shutdown()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("pkg") / "quickstart.yaml"
    return compiler.compile_pipeline(load_config("quickstart"), path)


def test_kubeflow_run_request_carries_spec_and_parameters(kfp_server, package):
    config = load_config("quickstart", overrides={"train.epochs": 3, "seed": 7})
    result = submit(
        config,
        "kubeflow",
        package=str(package),
        caching=False,
        host=kfp_server.host,
        namespace="team-a",
        experiment="hemaflow",
        run_name="r1",
        pipeline_root="gs://bucket/root",
        service_account="runner@p.iam.gserviceaccount.com",
    )
    assert result.id == "run-123"
    assert result.url == f"{kfp_server.host}/#/runs/details/run-123"
    (run,) = kfp_server.posts("/apis/v2beta1/runs")
    body = run["body"]
    assert body["display_name"] == "r1"
    assert body["experiment_id"] == "exp-1"
    assert body["service_account"] == "runner@p.iam.gserviceaccount.com"
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "hemaflow"
    compiled = yaml.safe_load(package.read_text())
    for key in ("pipelineInfo", "deploymentSpec", "components", "schemaVersion"):
        assert body["pipeline_spec"][key] == compiled[key], key
    params = body["runtime_config"]["parameters"]
    assert set(params) == {"config"}
    carried = from_json(params["config"])
    assert carried.train.epochs == 3 and carried.seed == 7
    assert carried.model.backbones == list(config.model.backbones)
    assert carried == config
    assert body["runtime_config"]["pipeline_root"] == "gs://bucket/root"
    # caching off for this run: every task of the submitted spec says so
    tasks = body["pipeline_spec"]["root"]["dag"]["tasks"]
    assert tasks["ingest"]["cachingOptions"] == {}
    (exp,) = kfp_server.posts("/apis/v2beta1/experiments")
    assert exp["body"] == {"display_name": "hemaflow", "namespace": "team-a"}


def test_kubeflow_submit_from_python_definition_via_cli(kfp_server, capsys):
    code = main(
        [
            "submit",
            "--host",
            kfp_server.host,
            "--run-name",
            "cli-run",
            "--set",
            "compare.top_k=1",
            "--data",
            "bloodmnist:64",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "run-123" in out and "/#/runs/details/run-123" in out
    (run,) = kfp_server.posts("/apis/v2beta1/runs")
    carried = from_json(run["body"]["runtime_config"]["parameters"]["config"])
    assert carried.compare.top_k == 1 and carried.data.source == "bloodmnist:64"
    # caching not turned off for this run: the compiled per-task setting stands
    tasks = run["body"]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert tasks["ingest"]["cachingOptions"] == {"enableCache": True}


def test_a_package_alone_is_sent_with_its_compiled_config(kfp_server, tmp_path):
    compiled = load_config("cpu", overrides={"seed": 5, "train.epochs": 2})
    package = compiler.compile_pipeline(compiled, tmp_path / "cpu.yaml")
    assert compiler.compiled_config(package) == compiled
    assert main(["submit", "--host", kfp_server.host, "--package", str(package)]) == 0
    assert main(["submit", "--host", kfp_server.host, "--package", str(package),
                 "--set", "seed=6"])  == 0  # fmt: skip
    first, second = (
        from_json(r["body"]["runtime_config"]["parameters"]["config"])
        for r in kfp_server.posts("/apis/v2beta1/runs")
    )
    assert first == compiled
    assert second == load_config("quickstart", overrides={"seed": 6})


def test_a_package_without_a_config_parameter_is_refused(package, tmp_path, capsys):
    ir = yaml.safe_load(package.read_text())
    del ir["root"]["inputDefinitions"]
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(ir))
    assert main(["submit", "--host", "http://127.0.0.1:9", "--package", str(old)]) == 1
    assert f"{old}: no config parameter; recompile it" in capsys.readouterr().err


@pytest.mark.parametrize("status", [403, 500])
def test_kubeflow_refusal_is_a_clear_error(kfp_server, package, status):
    kfp_server.fail_status = status
    with pytest.raises(SubmitError, match=rf"{kfp_server.host}: .*refused.*HTTP {status}"):
        submit(load_config("quickstart"), "kubeflow", package=str(package), host=kfp_server.host)


def test_unreachable_endpoint_is_a_clear_error(package, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    code = main(["submit", "--host", host, "--package", str(package)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{host}: Kubeflow Pipelines endpoint not reachable" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "compare.top_k=3"], "cannot select the top 3 of 2"),
        (["--set", "model.backbones=[small_cnn, no_such_net]"], "unknown backbone"),
        (["--pipeline-root", "/local/dir"], "not a gs://"),
        (["--backend", "vertex", "--project", "p", "--region", "r"], "gs:// pipeline root"),
        (["--backend", "vertex"], "--project and --region required"),
        (["--tensorboard", "projects/p/locations/r/tensorboards/1"], "needs --backend vertex"),
        (
            f"{VERTEX} --region us-east1 --tensorboard projects/p/locations/r/tensorboards/1".split(),
            "not in the run's region us-east1",
        ),
        (f"{VERTEX} --region r --tensorboard my-board".split(), "is not a TensorBoard resource"),
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(kfp_server, capsys, args, message):
    assert main(["submit", "--host", kfp_server.host, *args]) == 1
    assert message in capsys.readouterr().err
    assert kfp_server.requests == []


def test_unknown_profile_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["submit", "--profile", "laptop", "--host", "http://127.0.0.1:9"])
    assert "invalid choice: 'laptop'" in capsys.readouterr().err


# --------------------------------------------------------------------------- Vertex


@pytest.fixture
def vertex(monkeypatch):
    """Intercept the GAPIC calls; keep the real request objects the SDK builds."""
    from google.api_core import exceptions as gexc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform_v1, aiplatform_v1beta1
    from google.cloud.aiplatform.utils import gcs_utils

    sent: dict[str, Any] = {"requests": [], "error": None}

    def create_pipeline_job(self, request=None, *, parent=None, pipeline_job=None,
                            pipeline_job_id=None, **kwargs):  # fmt: skip
        module = aiplatform_v1beta1 if "v1beta1" in type(self).__module__ else aiplatform_v1
        req = request or module.CreatePipelineJobRequest(
            parent=parent, pipeline_job=pipeline_job, pipeline_job_id=pipeline_job_id
        )
        sent["requests"].append(req)
        if sent["error"]:
            raise sent["error"]
        job = type(req.pipeline_job)(req.pipeline_job)
        job.name = f"{req.parent}/pipelineJobs/{req.pipeline_job_id or 'generated'}"
        return job

    def create_schedule(self, request=None, *, parent=None, schedule=None, **kwargs):
        module = aiplatform_v1beta1 if "v1beta1" in type(self).__module__ else aiplatform_v1
        req = request or module.CreateScheduleRequest(parent=parent, schedule=schedule)
        sent["requests"].append(req)
        made = type(req.schedule)(req.schedule)
        made.name = f"{req.parent}/schedules/42"
        return made

    for module in (aiplatform_v1, aiplatform_v1beta1):
        monkeypatch.setattr(
            module.PipelineServiceClient, "create_pipeline_job", create_pipeline_job
        )
        monkeypatch.setattr(module.ScheduleServiceClient, "create_schedule", create_schedule)
    # PipelineJob.submit first makes sure the pipeline root's bucket exists (a GCS call).
    monkeypatch.setattr(
        gcs_utils,
        "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
        lambda output_artifacts_gcs_dir=None, **kwargs: sent["buckets"].append(
            output_artifacts_gcs_dir
        ),
    )
    sent["buckets"] = []
    sent["credentials"] = AnonymousCredentials()
    sent["exceptions"] = gexc
    return sent


@pytest.fixture(scope="module")
def vertex_package(tmp_path_factory):
    path = tmp_path_factory.mktemp("vpkg") / "quickstart-vertex.yaml"
    return compiler.compile_pipeline(load_config("quickstart"), path, "vertex")


def test_vertex_job_request_carries_spec_and_parameters(vertex, vertex_package):
    config = load_config("quickstart", overrides={"tune.max_trials": 5})
    result = submit(
        config,
        "vertex",
        package=str(vertex_package),
        project="my-proj",
        region="europe-west4",
        pipeline_root="gs://bucket/root",
        service_account="runner@my-proj.iam.gserviceaccount.com",
        network="projects/123/global/networks/vpc",
        run_name="hemaflow-r1",
        credentials=vertex["credentials"],
    )
    (req,) = vertex["requests"]
    assert req.parent == "projects/my-proj/locations/europe-west4"
    assert req.pipeline_job_id == "hemaflow-r1"
    job = req.pipeline_job
    assert job.service_account == "runner@my-proj.iam.gserviceaccount.com"
    assert job.network == "projects/123/global/networks/vpc"
    spec = type(job).to_dict(job)["pipeline_spec"]
    assert spec["root"] == yaml.safe_load(vertex_package.read_text())["root"]
    rc = job.runtime_config
    assert rc.gcs_output_directory == "gs://bucket/root"
    values = type(rc).to_dict(rc)["parameter_values"]
    carried = from_json(values["config"])
    assert carried.tune.max_trials == 5
    assert carried.model.backbones == list(config.model.backbones)
    assert values == json.loads(json.dumps(dag.parameters(config)))
    assert vertex["buckets"] == ["gs://bucket/root"]
    assert result.id.endswith("/pipelineJobs/hemaflow-r1")
    assert "console.cloud.google.com" in result.url and "my-proj" in result.url


def test_vertex_refusal_is_a_clear_error(vertex, vertex_package):
    vertex["error"] = vertex["exceptions"].PermissionDenied("caller lacks aiplatform.user")
    with pytest.raises(SubmitError, match=r"Vertex AI \(my-proj/us-central1\): request refused"):
        submit(
            load_config("quickstart"),
            "vertex",
            package=str(vertex_package),
            project="my-proj",
            region="us-central1",
            pipeline_root="gs://bucket/root",
            credentials=vertex["credentials"],
        )


TENSORBOARD = "projects/my-proj/locations/europe-west4/tensorboards/123"


@pytest.fixture
def vertex_metadata(vertex, monkeypatch):
    """Vertex AI Experiments and TensorBoard behind the GAPIC clients: contexts kept in memory."""
    from google.api_core import exceptions as gexc
    from google.cloud import aiplatform_v1, aiplatform_v1beta1

    contexts: dict[str, Any] = {}

    def get_metadata_store(self, request=None, *, name=None, **kwargs):
        return _module(self).MetadataStore(name=name)

    def get_context(self, request=None, *, name=None, **kwargs):
        if name not in contexts:
            raise gexc.NotFound(name)
        return contexts[name]

    def create_context(self, request=None, *, parent=None, context=None, context_id=None, **kw):
        made = type(context)(context)
        made.name = f"{parent}/contexts/{context_id}"
        contexts[made.name] = made
        vertex["requests"].append(("create_context", made))
        return made

    def update_context(self, request=None, *, context=None, **kwargs):
        contexts[context.name] = context
        vertex["requests"].append(("update_context", context))
        return context

    def add_context_children(self, request=None, *, context=None, child_contexts=None, **kw):
        vertex["requests"].append(("add_context_children", context, list(child_contexts)))
        return _module(self).AddContextChildrenResponse()

    def get_tensorboard(self, request=None, *, name=None, **kwargs):
        return _module(self).Tensorboard(name=name, display_name="runs")

    def get_pipeline_job(self, request=None, *, name=None, **kwargs):
        module = _module(self)
        job = module.PipelineJob(name=name, state=module.PipelineState.PIPELINE_STATE_RUNNING)
        job.job_detail.pipeline_run_context.name = f"{name.split('/pipelineJobs/')[0]}/run-ctx"
        return job

    for module in (aiplatform_v1, aiplatform_v1beta1):
        for name, fake in {
            "get_metadata_store": get_metadata_store,
            "get_context": get_context,
            "create_context": create_context,
            "update_context": update_context,
            "add_context_children": add_context_children,
        }.items():
            monkeypatch.setattr(module.MetadataServiceClient, name, fake)
        monkeypatch.setattr(module.TensorboardServiceClient, "get_tensorboard", get_tensorboard)
        monkeypatch.setattr(module.PipelineServiceClient, "get_pipeline_job", get_pipeline_job)
    return vertex


def _module(client):
    from google.cloud import aiplatform_v1, aiplatform_v1beta1

    return aiplatform_v1beta1 if "v1beta1" in type(client).__module__ else aiplatform_v1


def test_vertex_run_joins_an_experiment_backed_by_the_tensorboard(
    vertex_metadata, vertex_package, capsys, monkeypatch
):
    import google.auth

    vertex = vertex_metadata
    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (vertex["credentials"], "my-proj"))
    code = main(
        ["submit", "--backend", "vertex", "--package", str(vertex_package),
         "--project", "my-proj", "--region", "europe-west4", "--pipeline-root",
         "gs://bucket/root", "--run-name", "r2", "--experiment", "cells",
         "--tensorboard", TENSORBOARD]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    kinds = [r[0] if isinstance(r, tuple) else "create_pipeline_job" for r in vertex["requests"]]
    assert kinds == [
        "create_context",
        "update_context",
        "create_pipeline_job",
        "add_context_children",
    ]
    _, experiment = vertex["requests"][0]
    assert (
        experiment.name
        == "projects/my-proj/locations/europe-west4/metadataStores/default/contexts/cells"
    )
    assert experiment.schema_title == "system.Experiment"
    _, backed = vertex["requests"][1]
    assert backed.metadata["backing_tensorboard_resource"] == TENSORBOARD
    job = vertex["requests"][2].pipeline_job
    assert vertex["requests"][2].pipeline_job_id == "r2" and job.runtime_config.parameter_values
    _, parent, children = vertex["requests"][3]
    assert parent == experiment.name and children[0].endswith("/run-ctx")


def test_vertex_schedule_request(vertex, vertex_package):
    made = schedule.create(
        load_config("quickstart"),
        "vertex",
        "0 0 3 * * 1",
        "weekly",
        package=str(vertex_package),
        project="my-proj",
        region="us-central1",
        pipeline_root="gs://bucket/root",
        credentials=vertex["credentials"],
    )
    (req,) = vertex["requests"]
    assert req.schedule.cron == "0 3 * * 1"
    assert req.schedule.display_name == "weekly"
    assert req.schedule.create_pipeline_job_request.pipeline_job.runtime_config
    assert made.id.endswith("/schedules/42") and made.cron == "0 3 * * 1"


# --------------------------------------------------------------------------- schedules


def test_kubeflow_schedule_create_list_delete(kfp_server, package, capsys):
    code = main(
        ["schedule", "create", "--host", kfp_server.host, "--cron", "0 3 * * MON",
         "--name", "nightly", "--package", str(package)]
    )  # fmt: skip
    assert code == 0
    (rr,) = kfp_server.posts("/apis/v2beta1/recurringruns")
    body = rr["body"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * MON"
    assert body["display_name"] == "nightly"
    assert from_json(body["runtime_config"]["parameters"]["config"]).profile == "quickstart"
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "hemaflow"
    assert main(["schedule", "list", "--host", kfp_server.host]) == 0
    assert "rr-1\tnightly\t0 0 3 * * 1" in capsys.readouterr().out
    assert main(["schedule", "delete", "rr-1", "--host", kfp_server.host]) == 0
    assert kfp_server.requests[-1]["method"] == "DELETE"
    assert kfp_server.requests[-1]["path"].endswith("/recurringruns/rr-1")


@pytest.mark.parametrize(
    ("expr", "kubeflow", "vertex"),
    [
        ("0 3 * * 1", "0 0 3 * * 1", "0 3 * * 1"),
        ("30 0 3 * * *", "30 0 3 * * *", None),
        ("*/15 * * * *", "0 */15 * * * *", "*/15 * * * *"),
        ("0 0 1-5 JAN,JUL ?", "0 0 0 1-5 JAN,JUL ?", "0 0 1-5 JAN,JUL ?"),
        ("@daily", "0 0 0 * * *", "0 0 * * *"),
        ("TZ=Europe/Berlin 0 3 * * *", None, "TZ=Europe/Berlin 0 3 * * *"),
    ],
)
def test_cron_dialects(expr, kubeflow, vertex):
    for convert, expected in ((schedule.kubeflow_cron, kubeflow), (schedule.vertex_cron, vertex)):
        if expected is None:
            with pytest.raises(schedule.CronError):
                convert(expr)
        else:
            assert convert(expr) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 3 * *", "expected 5 fields"),
        ("61 3 * * *", "minute 61 is outside 0-59"),
        ("0 24 * * *", "hour 24 is outside 0-23"),
        ("0 3 0 * *", "day of month 0 is outside 1-31"),
        ("0 3 * 13 *", "month 13 is outside 1-12"),
        ("0 3 * * 9", "day of week 9"),
        ("0 3 * * x", "'x' is not a number"),
        ("0 5-3 * * *", "runs backwards"),
        ("*/0 * * * *", "bad step"),
        ("0 ? * * *", "only allowed in the day fields"),
    ],
)
def test_malformed_cron_is_refused_before_submission(kfp_server, package, capsys, expr, message):
    code = main(
        ["schedule", "create", "--host", kfp_server.host, "--cron", expr,
         "--package", str(package)]
    )  # fmt: skip
    assert code == 1
    assert message in capsys.readouterr().err
    assert kfp_server.requests == []


def test_configure_validates_and_hands_on_the_whole_config():
    from hemaflow.pipeline import steps

    with pytest.raises(ConfigError, match="config: not valid JSON"):
        steps.configure("{oops")
    with pytest.raises(ConfigError, match="listed more than once"):
        steps.validate_request(load_config(overrides={"model.backbones": ["small_cnn"] * 2}))
    config = load_config(overrides={"compare.top_k": 1, "train.epochs": 3})
    checked, backbones = steps.configure(config.to_json())
    assert from_json(checked) == config
    assert checked == config.to_json()
    assert backbones == list(config.model.backbones)


def test_config_json_rebuilds_the_config(tmp_path):
    from hemaflow.pipeline import steps

    user = tmp_path / "mine.yaml"
    user.write_text("profile: cpu\ntrain: {epochs: 3}\nmodel: {head: {dense: [32, 16]}}\n")
    config = load_config(path=user, overrides={"evaluate.max_images": 100})
    assert dag.parameters(config) == {"config": config.to_json()}
    rebuilt = steps.load(dag.parameters(config)["config"])
    assert rebuilt == config
    assert rebuilt.model.head.dense == [32, 16] and rebuilt.evaluate.max_images == 100
