"""What every pipeline task does around its stage function: config, artifact paths, outputs.

The KFP component wrappers in :mod:`hemaflow.pipeline.tasks` are one call into this module,
so the glue between KFP artifacts and the stages' ``run`` functions is written once, is
importable without KFP and is tested like any other code. Nothing here does a stage's work.
A task's config is the JSON the pipeline hands it (:func:`load`), never a profile file.
Artifacts are passed duck-typed (anything with ``uri``, ``path`` and ``metadata``), which is
what ``kfp.dsl`` artifacts are inside a running task.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hemaflow import config as cfg
from hemaflow import storage

if TYPE_CHECKING:
    from hemaflow.planning import Workload


#: Val images the plan writes every corruption set of, to time evaluate's writing of them.
GENERATION_PROBE = 32


class ArtifactLike(Protocol):
    uri: str
    path: str
    metadata: dict[str, Any]


def validate_request(config: cfg.Config) -> None:
    """Refuse what would only fail later in the run: unknown backbones, k out of range."""
    backbones, k = list(config.model.backbones), config.compare.top_k
    if not backbones:
        raise cfg.ConfigError("backbones: name at least one candidate backbone")
    duplicates = sorted({b for b in backbones if backbones.count(b) > 1})
    if duplicates:
        raise cfg.ConfigError(f"backbones: listed more than once: {', '.join(duplicates)}")
    if not 1 <= k <= len(backbones):
        raise cfg.ConfigError(
            f"k: cannot select the top {k} of {len(backbones)} candidate backbone(s) "
            f"({', '.join(backbones)}); choose 1 <= k <= {len(backbones)}"
        )
    from hemaflow.modeling.zoo import known_backbones

    known = list(known_backbones())
    unknown = [b for b in backbones if b not in known]
    if unknown:
        raise cfg.ConfigError(
            f"backbones: unknown backbone(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(known)}"
        )
    from hemaflow.modeling import weights, zoo

    # A weights file or mirror must serve every pretrained candidate (existence only).
    pretrained = {b: zoo.backbone_spec(b) for b in backbones if zoo.is_pretrainable(b)}
    weights.check_mirror(config.model.weights, pretrained, config.data.image_size)


def configure(config: str) -> tuple[str, list[str]]:
    """The run's config JSON validated up front (fails fast), canonical, and its backbones.

    The backbones are returned apart because the DAG fans out over them.
    """
    resolved = load(config)
    validate_request(resolved)
    return resolved.to_json(), list(resolved.model.backbones)


def load(config: str) -> cfg.Config:
    """The config of one task, from the JSON it was handed; no profile file is read."""
    return cfg.from_json(config, origin="config")


def checkpointed(config: str, artifact: ArtifactLike, backbone: str) -> cfg.Config:
    """The task's config with ``train.checkpoint_dir`` keyed to this task, for resuming.

    KFP names an output ``PIPELINE_ROOT/.../<task>/<output>`` (kfp.local:
    ``root/<run>/<loop iteration>/<task>/<output>``; Kubeflow: the driver's URI for the
    task, which its retries reuse; Vertex: ``.../<job>/<task>_<id>/<output>``): unique per
    run and task and the same for every retry of it. The checkpoints go beside it, with the
    backbone in the name as well, so a retried or preempted task finds its own and no
    other task's. A configured ``train.checkpoint_dir`` is kept; a pipeline root on a
    store hemaflow cannot write (s3://, minio://) keeps them on the pod's disk.
    """
    conf = load(config)
    uri = str(artifact.uri).rstrip("/")
    if conf.train.checkpoint_dir or not uri or ("://" in uri and not storage.is_gcs(uri)):
        return conf
    return conf.replace({"train.checkpoint_dir": f"{uri}.checkpoints/{backbone}"})


def plan(
    results: list[dict[str, Any]],
    tuned: list[str],
    data_dir: str,
    config: str,
    out_dir: str,
    now: float | None = None,
    created: str = "",
) -> list[dict[str, Any]]:
    """A time-limited run's plan (:func:`hemaflow.planning.make_plan`) from what compare
    measured, the data's sizes and the clock: its members (:func:`planned_config` gives
    the config ensemble gets).

    Each member carries its backbone's tuned hyperparameters and its wall-clock deadline, so
    a train task needs nothing but its item of the list. ``plan.json`` and a report go to
    ``out_dir``. The run's deadline is ``budget.deadline`` (what ``hemaflow run`` set when it
    started), else ``budget.minutes`` from the job's creation time ``created`` (a submitted or
    scheduled run), else from now.
    """
    from hemaflow.components import compare

    from hemaflow import planning
    from hemaflow.modeling import fitting
    from hemaflow.reporting.report import Report

    conf = load(config)
    b = conf.budget
    tuned_hparams = {}
    for folder in tuned:
        raw = json.loads(storage.read_text(fitting.hparams_file(folder)))
        tuned_hparams[raw["backbone"]] = raw["hparams"]
    usable = [r for r in results if r.get("backbone") in tuned_hparams] or list(results)
    criterion = conf.compare.criterion
    if any(r.get("bmk_val_accuracy") is None for r in usable):
        criterion = "val_accuracy"  # one yardstick for all, as select-top-k does
    measured = [planning.Measured.from_result(r, compare.score(r, criterion)) for r in usable]
    work = workload(conf, data_dir, pretrained=any(r.get("pretrained") for r in usable))
    # The clock is read after the workload, whose corruption timing takes a few seconds.
    now = time.time() if now is None else now
    started = planning.job_start(created)
    deadline = b.deadline or (started if started is not None else now) + b.minutes * 60
    budget = planning.Budget(
        seconds_left=deadline - now,
        spent_seconds=max(b.minutes * 60 - (deadline - now), 0.0),
        parallel=b.parallel_members,
        margin=b.margin,
        max_members=b.max_members,
        max_epochs=b.max_epochs,
        lengthen_at=b.lengthen_at,
        views=conf.ensemble.views,
        seed=conf.seed,
    )
    made = planning.make_plan(measured, work, budget)
    members = [
        {
            "index": i,
            "backbone": m.backbone,
            "seed": m.seed,
            "epochs": m.epochs,
            "deadline": now + m.deadline_offset,
            "predicted_seconds": m.predicted_seconds,
            # As JSON text: a loop item's numbers come back as floats (units=512.0).
            "hparams": json.dumps(tuned_hparams.get(m.backbone, {})),
        }
        for i, m in enumerate(made.members)
    ]
    record = {
        **made.to_dict(),
        "minutes": b.minutes,
        "deadline": deadline,
        "planned_at": now,
        "members": [{k: v for k, v in m.items() if k != "hparams"} for m in members],
    }
    with storage.artifact_dir(out_dir) as staging:
        storage.write_text_atomic(staging / "plan.json", json.dumps(record, indent=2))
        report = Report("Time-limited plan")
        report.paragraph(
            f"Time limit {b.minutes:g} min: {budget.spent_seconds / 60:.1f} min spent before the "
            f"plan, {budget.seconds_left / 60:.1f} min left, {b.margin:.0%} kept in reserve; "
            f"members train {'side by side' if b.parallel_members else 'one after another'}; "
            f"{made.views} test-time view(s). Tuning ran before the plan, as configured."
        )
        report.table(record["members"])
        report.table([{k: round(v, 1) for k, v in made.predicted.items()}])
        report.json_block(made.inputs)
        report.write(staging)
    return members


def workload(conf: cfg.Config, data_dir: str, pretrained: bool) -> Workload:
    """The rest of the run in images (:class:`hemaflow.planning.Workload`) from the data's
    manifest and the config, with evaluate's corruption writing timed on a few val images."""
    from hemaflow.components import evaluate

    from hemaflow import planning
    from hemaflow.data import labelled
    from hemaflow.modeling import fitting

    info = fitting.read_data_info(data_dir)
    test = fitting.split_size(info, "test")
    ev = conf.evaluate
    sample = min(test, ev.max_images) if ev.max_images else test
    sets = len(evaluate.corruption_jobs(conf)) * len(ev.severities)  # each on the same sample
    probe = labelled.read_split(data_dir, "val", max_images=GENERATION_PROBE, seed=conf.seed)
    return planning.Workload(
        train_images=fitting.split_size(info, "train"),
        val_images=fitting.split_size(info, "val"),
        eval_images=test + info.counts.get("bmk", 0),
        corruption_images=sets * sample * (2 if ev.bn_adaptation else 1),
        full_epochs=conf.train.epochs,
        warmup_epochs=conf.train.warmup_epochs if pretrained else 0,
        generation_seconds=evaluate.generation_seconds(probe.images, conf, sample),
    )


def planned_config(config: str, plan_dir: str) -> str:
    """``config`` with the test-time views a plan (its ``plan.json``) chose."""
    record = json.loads(storage.read_text(storage.join(plan_dir, "plan.json")))
    return load(config).replace({"ensemble.views": int(record["views"])}).to_json()


def plan_predicted(artifact: ArtifactLike) -> dict[str, float]:
    """The predicted seconds a plan task wrote (its ``plan.json``), for its Metrics."""
    record = json.loads(storage.read_text(storage.join(location(artifact), "plan.json")))
    return {k: float(v) for k, v in record["predicted"].items()}


def member(config: str, artifact: ArtifactLike, item: dict[str, Any]) -> tuple[cfg.Config, str]:
    """One planned member's config (its epochs, seed, deadline) and its hyperparameters file.

    The epochs also size the learning-rate schedule, which train builds from ``train.epochs``.
    """
    conf = checkpointed(config, artifact, f"{item['backbone']}-{item['seed']}")
    conf = conf.replace(
        {
            "seed": int(item["seed"]),
            "train.epochs": int(item["epochs"]),
            "budget.member_deadline": float(item["deadline"]),
        }
    )
    hparams = ""
    if item.get("hparams"):
        handle, hparams = tempfile.mkstemp(prefix="hemaflow-hparams-", suffix=".json")
        with os.fdopen(handle, "w") as f:
            f.write(json.dumps({"hparams": json.loads(item["hparams"])}))
    return conf, hparams


def location(artifact: ArtifactLike) -> str:
    """Where a stage reads or writes an artifact: the local path KFP gives the task.

    Not the gs:// URI, even on a cluster: Kubeflow's launcher downloads inputs to that path
    and uploads outputs from it after the task (a missing local output fails the task), and
    on Vertex the path is a Cloud Storage FUSE mount of the URI. Locally the two coincide.
    """
    return artifact.path


def copy_file(folder: str, name: str, artifact: ArtifactLike) -> None:
    """Copy ``folder/name`` (local or gs://) to a single-file output artifact."""
    source = storage.local_path(storage.join(folder, name))
    target = Path(artifact.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def scalar_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a stage's result, for a KFP Metrics artifact."""
    out = {}
    for key, value in sorted(result.items()):
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def log_metrics(artifact: Any, result: dict[str, Any]) -> None:
    """Log a result's scalars on a Metrics artifact and write them to its file as JSON.

    KFP reads metrics from the metadata; the file makes the artifact exist on disk, which
    kfp.local's cache requires before it reuses a task's outputs.
    """
    scalars = scalar_metrics(result)
    for key, value in scalars.items():
        artifact.log_metric(key, value)
    write_json(artifact, scalars)


def write_json(artifact: ArtifactLike, value: Any) -> None:
    target = Path(artifact.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    storage.write_text_atomic(target, json.dumps(value, indent=1, sort_keys=True))


def json_safe(result: dict[str, Any]) -> dict[str, Any]:
    """A stage result as plain JSON (numpy scalars and paths turned into str/float)."""
    return json.loads(json.dumps(result, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def confusion_matrix(eval_dir: str, artifact: Any) -> None:
    """Fill a ClassificationMetrics artifact from the evaluation's ``metrics.json``
    (top-level ``class_names`` and ``confusion_matrix``, rows = true class)."""
    metrics = json.loads(storage.read_text(storage.join(eval_dir, "metrics.json")))
    names = list(metrics["class_names"])
    counts = [[int(v) for v in row] for row in metrics["confusion_matrix"]]
    artifact.log_confusion_matrix(names, counts)
    write_json(artifact, {"class_names": names, "confusion_matrix": counts})
