"""Recurring retraining runs: Kubeflow recurring runs or Vertex AI PipelineJobSchedules.

Cron dialects differ: Kubeflow's scheduler (robfig/cron) takes six fields with seconds
first (``0 0 3 * * *``), Vertex five (``0 3 * * *``, optionally ``TZ=Europe/Berlin ...``).
Users may write either; :func:`kubeflow_cron` and :func:`vertex_cron` convert and validate,
so a malformed expression fails here rather than on the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hemaflow.pipeline.resources import Target
from hemaflow.pipeline.submit import kfp_client, kubeflow_errors, vertex_errors

from hemaflow.config import Config
from hemaflow.errors import HemaflowError


class CronError(HemaflowError, ValueError):
    """A cron expression that neither backend would accept."""


#: (name, low, high) of the fields of a five-field expression.
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 6))  # fmt: skip
_SECOND = ("second", 0, 59)
_NAMES = {
    "month": ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
    "day of week": ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_TZ = re.compile(r"^(?:CRON_)?TZ=([A-Za-z_+\-/0-9]+)\s+")


@dataclass(frozen=True)
class Schedule:
    backend: str
    id: str
    name: str
    cron: str


def _check_field(text: str, name: str, low: int, high: int, expr: str) -> None:
    names = _NAMES.get(name, [])
    base = 1 if name == "month" else 0

    def number(token: str) -> int:
        if token.upper() in names:
            return names.index(token.upper()) + base
        if not token.isdigit():
            raise CronError(f"cron {expr!r}: {name} field {text!r}: {token!r} is not a number")
        value = int(token)
        if not low <= value <= high:
            raise CronError(f"cron {expr!r}: {name} {value} is outside {low}-{high}")
        return value

    for part in text.split(","):
        body, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise CronError(f"cron {expr!r}: {name} field {text!r}: bad step {step!r}")
        if body in ("*", "?"):
            if body == "?" and name not in ("day of month", "day of week"):
                raise CronError(f"cron {expr!r}: '?' is only allowed in the day fields")
            continue
        start, dash, end = body.partition("-")
        if not start:
            raise CronError(f"cron {expr!r}: {name} field {text!r} is empty")
        first = number(start)
        if dash and number(end) < first:
            raise CronError(f"cron {expr!r}: {name} range {body!r} runs backwards")


def parse_cron(expr: str) -> tuple[str, list[str]]:
    """Split an expression into (time zone prefix, six fields with seconds first)."""
    text = " ".join(expr.split())
    tz = ""
    if match := _TZ.match(text + " "):
        tz = match.group(0).strip()
        text = text[match.end() :].strip()
    text = _MACROS.get(text.lower(), text)
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise CronError(
            f"cron {expr!r}: expected 5 fields (minute hour day month weekday) or 6 with "
            f"seconds first, got {len(fields)}"
        )
    for value, spec in zip(fields, (_SECOND, *_FIELDS), strict=True):
        _check_field(value, *spec, expr)
    return tz, fields


def kubeflow_cron(expr: str) -> str:
    """The six-field form Kubeflow's scheduler takes (seconds first; no time zone)."""
    tz, fields = parse_cron(expr)
    if tz:
        raise CronError(f"cron {expr!r}: Kubeflow recurring runs take no time zone prefix")
    return " ".join(fields)


def vertex_cron(expr: str) -> str:
    """The five-field form Vertex takes (minute resolution, optional TZ= prefix)."""
    tz, fields = parse_cron(expr)
    if fields[0] != "0":
        raise CronError(
            f"cron {expr!r}: Vertex schedules have minute resolution; the seconds field must be 0"
        )
    return " ".join([tz, *fields[1:]] if tz else fields[1:])


# --------------------------------------------------------------------------- Kubeflow


def create_kubeflow(
    package: str,
    parameters: dict[str, Any],
    cron: str,
    name: str,
    host: str,
    namespace: str = "kubeflow",
    experiment: str = "hemaflow",
    pipeline_root: str | None = None,
    service_account: str | None = None,
    caching: bool = True,
    max_concurrency: int = 1,
    existing_token: str | None = None,
) -> Schedule:
    """A Kubeflow recurring run of the compiled pipeline."""
    expression = kubeflow_cron(cron)
    with kubeflow_errors(host):
        client = kfp_client(host, namespace, existing_token)
        exp = client.create_experiment(experiment, namespace=namespace)
        run = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=name,
            cron_expression=expression,
            max_concurrency=max_concurrency,
            no_catchup=True,
            params=parameters,
            pipeline_package_path=str(package),
            pipeline_root=pipeline_root or None,
            enable_caching=None if caching else False,
            service_account=service_account or None,
        )
    return Schedule("kubeflow", run.recurring_run_id, name, expression)


def list_kubeflow(
    host: str, namespace: str = "kubeflow", existing_token: str | None = None
) -> list[Schedule]:
    out = []
    with kubeflow_errors(host):
        client = kfp_client(host, namespace, existing_token)
        token = ""
        while True:
            page = client.list_recurring_runs(page_token=token, page_size=100, namespace=namespace)
            for run in page.recurring_runs or []:
                cron = getattr(getattr(run.trigger, "cron_schedule", None), "cron", "") or ""
                out.append(Schedule("kubeflow", run.recurring_run_id, run.display_name, cron))
            token = page.next_page_token or ""
            if not token:
                return out


def delete_kubeflow(
    schedule_id: str, host: str, namespace: str = "kubeflow", existing_token: str | None = None
) -> None:
    with kubeflow_errors(host):
        kfp_client(host, namespace, existing_token).delete_recurring_run(schedule_id)


# --------------------------------------------------------------------------- Vertex


def create_vertex(
    package: str,
    parameters: dict[str, Any],
    cron: str,
    name: str,
    project: str,
    region: str,
    pipeline_root: str,
    service_account: str | None = None,
    network: str | None = None,
    caching: bool = True,
    max_concurrency: int = 1,
    credentials: Any = None,
) -> Schedule:
    """A Vertex AI PipelineJobSchedule of the compiled pipeline."""
    from hemaflow.pipeline.submit import vertex_job

    expression = vertex_cron(cron)
    job = vertex_job(
        package, parameters, project, region, pipeline_root, name, caching, None, credentials
    )
    with vertex_errors(f"Vertex AI ({project}/{region})"):
        schedule = job.create_schedule(
            cron=expression,
            display_name=name,
            max_concurrent_run_count=max_concurrency,
            service_account=service_account or None,
            network=network or None,
        )
    return Schedule("vertex", schedule.resource_name, name, expression)


def list_vertex(project: str, region: str, credentials: Any = None) -> list[Schedule]:
    from google.cloud import aiplatform

    with vertex_errors(f"Vertex AI ({project}/{region})"):
        found = aiplatform.PipelineJobSchedule.list(
            project=project, location=region, credentials=credentials
        )
        return [Schedule("vertex", s.resource_name, s.display_name, s.cron) for s in found]


def delete_vertex(schedule_id: str, project: str, region: str, credentials: Any = None) -> None:
    from google.cloud import aiplatform

    with vertex_errors(f"Vertex AI ({project}/{region})"):
        aiplatform.PipelineJobSchedule.get(
            schedule_id, project=project, location=region, credentials=credentials
        ).delete()


def create(
    config: Config,
    backend: Target,
    cron: str,
    name: str,
    package: str | None = None,
    caching: bool = True,
    **options: Any,
) -> Schedule:
    """Check everything (cron, backbones, k, root), compile unless ``package``, then schedule."""
    import tempfile
    from pathlib import Path

    from hemaflow.pipeline import dag
    from hemaflow.pipeline.submit import check_request, prepare_package

    (vertex_cron if backend == "vertex" else kubeflow_cron)(cron)
    check_request(config, backend, options.get("pipeline_root"))
    parameters = dag.parameters(config)
    with tempfile.TemporaryDirectory(prefix="hemaflow-schedule-") as tmp:
        path = prepare_package(config, backend, package, Path(tmp))
        if backend == "vertex":
            root = options.pop("pipeline_root", None) or config.pipeline.pipeline_root
            return create_vertex(
                str(path), parameters, cron, name, pipeline_root=root, caching=caching, **options
            )
        return create_kubeflow(str(path), parameters, cron, name, caching=caching, **options)
