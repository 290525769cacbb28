"""Submit the pipeline to a Kubeflow Pipelines endpoint or to Vertex AI Pipelines.

Both take a compiled IR file (from ``hemaflow compile``) or compile the Python definition on
the spot, and the parameters that reproduce the config. Everything a user can get wrong is
checked before anything is sent; a backend that cannot be reached or refuses the request
raises :class:`SubmitError` naming the endpoint and the status.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hemaflow.pipeline.resources import TARGETS, Target

from hemaflow.config import Config
from hemaflow.errors import HemaflowError


class SubmitError(HemaflowError, RuntimeError):
    """The backend could not be reached or refused the request."""


class RequestError(HemaflowError, ValueError):
    """A request that could only fail remotely: wrong backend, options or pipeline root."""


@dataclass(frozen=True)
class Submission:
    backend: str
    id: str
    url: str


def check_request(config: Config, backend: Target, pipeline_root: str | None) -> None:
    """Refuse a submission that could only fail remotely (bad backbones, k, pipeline root)."""
    from hemaflow.pipeline import steps

    if backend not in TARGETS:
        raise RequestError(f"backend: {backend!r} is not one of {', '.join(TARGETS)}")
    steps.validate_request(config)
    root = pipeline_root or config.pipeline.pipeline_root
    if backend == "vertex" and not (root or "").startswith("gs://"):
        raise RequestError(f"pipeline root: Vertex AI needs a gs:// pipeline root, got {root!r}")
    if root and not root.startswith(("gs://", "minio://", "s3://")):
        raise RequestError(f"pipeline root: {root!r} is not a gs://, s3:// or minio:// URI")


def prepare_package(config: Config, target: Target, package: str | None, workdir: Path) -> Path:
    """The compiled file to send: ``package`` after checking it is IR, else a fresh compile."""
    from hemaflow.pipeline import compiler

    if package:
        compiler.load_ir(package)
        return Path(package)
    return compiler.compile_pipeline(config, workdir / "pipeline.yaml", target)


def submit_kubeflow(
    package: str | Path,
    parameters: dict[str, Any],
    host: str,
    namespace: str = "kubeflow",
    experiment: str = "hemaflow",
    pipeline_root: str | None = None,
    service_account: str | None = None,
    run_name: str | None = None,
    caching: bool = True,
    existing_token: str | None = None,
) -> Submission:
    """Create a run on a Kubeflow Pipelines endpoint; returns its id and UI URL.

    ``caching=False`` turns caching off for every task of this run; otherwise each task keeps
    the setting it was compiled with (``pipeline.caching`` of the profile).
    """
    with kubeflow_errors(host):
        client = kfp_client(host, namespace, existing_token)
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=parameters,
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
            pipeline_root=pipeline_root or None,
            enable_caching=None if caching else False,
            service_account=service_account or None,
        )
    run_id = result.run_id
    return Submission("kubeflow", run_id, f"{host.rstrip('/')}/#/runs/details/{run_id}")


def kfp_client(host: str, namespace: str, existing_token: str | None = None) -> Any:
    """A kfp.Client for ``host`` (in-cluster it picks up the projected service account token)."""
    import kfp

    with warnings.catch_warnings():
        # kfp warns on every client that it needs a v2 backend; hemaflow only targets v2.
        warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
        return kfp.Client(host=host, namespace=namespace, existing_token=existing_token)


@contextlib.contextmanager
def kubeflow_errors(host: str) -> Iterator[None]:
    """Turn kfp client failures into a :class:`SubmitError` naming the endpoint."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        body = exc.body.strip() if isinstance(exc.body, str) else ""
        raise SubmitError(
            f"{host}: Kubeflow Pipelines refused the request (HTTP {exc.status} {exc.reason})"
            + (f": {body[:300]}" if body else "")
        ) from exc
    except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
        raise SubmitError(
            f"{host}: Kubeflow Pipelines endpoint not reachable ({type(exc).__name__}: {exc})"
        ) from exc


def vertex_job(
    package: str | Path,
    parameters: dict[str, Any],
    project: str,
    region: str,
    pipeline_root: str,
    run_name: str | None = None,
    caching: bool = True,
    labels: dict[str, str] | None = None,
    credentials: Any = None,
) -> Any:
    """An ``aiplatform.PipelineJob`` for the compiled file (not yet submitted)."""
    try:
        from google.cloud import aiplatform
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise SubmitError(
            "Vertex AI needs google-cloud-aiplatform: pip install 'hemaflow[vertex]'"
        ) from exc
    return aiplatform.PipelineJob(
        display_name=run_name or "hemaflow",
        template_path=str(package),
        job_id=run_name or None,
        pipeline_root=pipeline_root,
        parameter_values=parameters,
        enable_caching=None if caching else False,
        labels=labels or {"app": "hemaflow"},
        credentials=credentials,
        project=project,
        location=region,
    )


_TENSORBOARD = re.compile(r"(projects/[^/]+/locations/(?P<region>[^/]+)/tensorboards/)?\d+")
_EXPERIMENT = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


def check_tensorboard(tensorboard: str, experiment: str, region: str) -> None:
    """Refuse a TensorBoard or experiment name that Vertex AI could only refuse later."""
    match = _TENSORBOARD.fullmatch(tensorboard)
    if not match:
        raise RequestError(
            f"--tensorboard: {tensorboard!r} is not a TensorBoard resource "
            "(projects/PROJECT/locations/REGION/tensorboards/ID, or the numeric ID)"
        )
    if match["region"] and match["region"] != region:
        raise RequestError(f"--tensorboard: {tensorboard} is not in the run's region {region}")
    if not _EXPERIMENT.fullmatch(experiment):
        raise RequestError(
            f"--experiment: {experiment!r} is not a Vertex AI experiment name "
            "(lower-case letters, digits and dashes, at most 128)"
        )


def vertex_experiment(
    name: str, tensorboard: str, project: str, region: str, credentials: Any = None
) -> Any:
    """The Vertex AI experiment ``name`` (made if new) with ``tensorboard`` as its backing."""
    from google.cloud import aiplatform

    experiment = aiplatform.Experiment.get_or_create(
        name, project=project, location=region, credentials=credentials
    )
    try:
        experiment.assign_backing_tensorboard(tensorboard)
    except ValueError as exc:  # backed by another TensorBoard, or one in another project
        raise RequestError(f"--tensorboard: {exc}") from exc
    return experiment


def submit_vertex(
    package: str | Path,
    parameters: dict[str, Any],
    project: str,
    region: str,
    pipeline_root: str,
    service_account: str | None = None,
    network: str | None = None,
    run_name: str | None = None,
    caching: bool = True,
    labels: dict[str, str] | None = None,
    credentials: Any = None,
    tensorboard: str | None = None,
    experiment: str | None = None,
) -> Submission:
    """Submit a Vertex AI PipelineJob; returns its resource name and console URL.

    With ``tensorboard`` the run joins ``experiment`` (default ``hemaflow``), whose backing
    TensorBoard it becomes, so the run, its parameters and metrics sit beside that
    TensorBoard's time series.
    """
    experiment = experiment or "hemaflow"
    if tensorboard:
        check_tensorboard(tensorboard, experiment, region)
    job = vertex_job(
        package, parameters, project, region, pipeline_root, run_name, caching, labels, credentials
    )
    with vertex_errors(f"Vertex AI ({project}/{region})"):
        backing = (
            vertex_experiment(experiment, tensorboard, project, region, credentials)
            if tensorboard
            else None
        )
        job.submit(
            service_account=service_account or None, network=network or None, experiment=backing
        )
    name = job.resource_name
    job_id = name.rsplit("/", 1)[-1]
    url = (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}/pipelines/runs/"
        f"{job_id}?project={project}"
    )
    return Submission("vertex", name, url)


@contextlib.contextmanager
def vertex_errors(where: str) -> Iterator[None]:
    """Turn Google API failures into a :class:`SubmitError` naming the backend."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    try:
        yield
    except gexc.GoogleAPICallError as exc:
        raise SubmitError(f"{where}: request refused ({exc.code}: {exc.message})") from exc
    except (gexc.RetryError, auth_exc.GoogleAuthError) as exc:
        raise SubmitError(f"{where}: not reachable or not authorised ({exc})") from exc


def submit(
    config: Config,
    backend: Target,
    package: str | None = None,
    caching: bool = True,
    **options: Any,
) -> Submission:
    """Check, compile (unless ``package``) and submit ``config``'s pipeline to ``backend``."""
    from hemaflow.pipeline import dag

    check_request(config, backend, options.get("pipeline_root"))
    if backend != "vertex" and options.pop("tensorboard", None):
        raise RequestError("--tensorboard: a Vertex AI TensorBoard needs --backend vertex")
    parameters = dag.parameters(config)
    with tempfile.TemporaryDirectory(prefix="hemaflow-submit-") as tmp:
        path = prepare_package(config, backend, package, Path(tmp))
        if backend == "vertex":
            return submit_vertex(
                path,
                parameters,
                caching=caching,
                pipeline_root=options.pop("pipeline_root", None) or config.pipeline.pipeline_root,
                **options,
            )
        return submit_kubeflow(path, parameters, caching=caching, **options)
