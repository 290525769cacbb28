"""The KFP components: one thin wrapper per stage around the installed stage's ``run``.

Every wrapper is a lightweight Python component that takes the run's whole config as one JSON
string, rebuilds the :class:`~hemaflow.config.Config` from it (no profile file is read inside
a task) and calls the ``run`` of one module of :mod:`hemaflow.components` through
:mod:`hemaflow.pipeline.steps`. The same definition runs under
``kfp.local.SubprocessRunner(use_venv=False)`` (the current environment, where hemaflow is
installed), under ``kfp.local.DockerRunner`` and on a cluster in the project image:
:func:`make_components` gives all of them one image and installs nothing at run time. Stage
modules are imported inside the wrappers, so compiling never imports them. Resources,
retries and caching are set per task by :mod:`hemaflow.pipeline.resources`.

This module has no ``from __future__ import annotations``: KFP reads the annotations.
"""

from typing import List, NamedTuple  # noqa: UP035 - KFP's type parser knows typing.List

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)


def configure(
    config: str,
) -> NamedTuple("Outputs", [("config", str), ("backbones", List[str])]):  # noqa: UP006
    """Validate the run's config before any data is read; hand on its canonical JSON and the
    backbones the DAG fans out over."""
    from hemaflow.pipeline import steps

    return steps.configure(config)


def ingest(
    config: str,
    dataset: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Stage 1: read, validate, deduplicate and split the source into a Dataset."""
    from hemaflow.components import ingest as stage
    from hemaflow.pipeline import steps

    conf = steps.load(config)
    out = steps.location(dataset)
    result = stage.run(conf.data.source, out, conf)
    steps.copy_file(out, "report.html", report)
    steps.log_metrics(metrics, result)


def balance_and_augment(
    dataset: Input[Dataset],
    config: str,
    tfrecords: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Stage 2: balance classes with augmentation and write sharded TFRecords (+ Bmk)."""
    from hemaflow.components import augment as stage
    from hemaflow.pipeline import steps

    out = steps.location(tfrecords)
    result = stage.run(steps.location(dataset), out, steps.load(config))
    steps.copy_file(out, "report.html", report)
    steps.log_metrics(metrics, result)


def compare(
    data: Input[Dataset],
    backbone: str,
    config: str,
    result: Output[Artifact],
    metrics: Output[Metrics],
) -> dict:
    """Stage 3: a few epochs of one candidate backbone; its scores feed select-top-k."""
    from hemaflow.components import compare as stage
    from hemaflow.pipeline import steps

    out = steps.location(result)
    conf = steps.checkpointed(config, result, backbone)
    scores = stage.run(steps.location(data), backbone, out, conf)
    steps.log_metrics(metrics, scores)
    return steps.json_safe(scores)


def select_top_k(
    results: List[dict],  # noqa: UP006
    config: str,
) -> List[str]:  # noqa: UP006
    """The config's top k candidates by its criterion."""
    from hemaflow.components import compare as stage
    from hemaflow.pipeline import steps

    conf = steps.load(config)
    return list(stage.select_top_k(list(results), conf.compare.top_k, conf.compare.criterion))


def tune(
    data: Input[Dataset],
    backbone: str,
    config: str,
    hparams: Output[Artifact],
    metrics: Output[Metrics],
):
    """Stage 4: keras-tuner search for one backbone; its folder holds best_hparams.json."""
    from hemaflow.components import tune as stage
    from hemaflow.pipeline import steps

    conf = steps.checkpointed(config, hparams, backbone)
    best = stage.run(steps.location(data), backbone, steps.location(hparams), conf)
    steps.log_metrics(metrics, best)


def train(
    data: Input[Dataset],
    hparams: Input[Artifact],
    backbone: str,
    config: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Stage 5: final training of one backbone with its tuned hyperparameters."""
    from hemaflow.components import train as stage
    from hemaflow.pipeline import steps

    result = stage.run(
        steps.location(data),
        backbone,
        steps.location(hparams),
        steps.location(model),
        steps.checkpointed(config, model, backbone),
    )
    model.metadata["backbone"] = backbone
    steps.log_metrics(metrics, result)


def plan(
    data: Input[Dataset],
    results: List[dict],  # noqa: UP006
    hparams: Input[List[Artifact]],  # noqa: UP006
    config: str,
    schedule: Output[Artifact],
    metrics: Output[Metrics],
    created: str = "",
) -> List[dict]:  # noqa: UP006
    """A time limit turned into members, epochs and views from what compare measured here;
    refuses a limit too short for one epoch of one member before any training starts.
    ``created``: the job's creation time, where the backend fills it in.

    One output only: kfp.local (2.17) loops over a task's ``Output``, not a named output."""
    from hemaflow.pipeline import steps

    members = steps.plan(
        list(results),
        [steps.location(h) for h in hparams],
        steps.location(data),
        config,
        steps.location(schedule),
        created=created,
    )
    predicted = {f"predicted_{k}_seconds": v for k, v in steps.plan_predicted(schedule).items()}
    steps.log_metrics(metrics, {"members": len(members), **predicted})
    return members


def plan_config(schedule: Input[Artifact], config: str) -> str:
    """The config ensemble gets in a time-limited run: the test-time views the plan chose."""
    from hemaflow.pipeline import steps

    return steps.planned_config(config, steps.location(schedule))


def train_member(
    data: Input[Dataset],
    backbone: str,
    member: dict,
    config: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Stage 5 for one member of a time-limited plan: its epochs, seed and deadline."""
    from hemaflow.components import train as stage
    from hemaflow.pipeline import steps

    conf, hparams = steps.member(config, model, member)
    result = stage.run(steps.location(data), backbone, hparams, steps.location(model), conf)
    model.metadata["backbone"] = backbone
    model.metadata["member"] = int(member["index"])
    steps.log_metrics(metrics, result)


def ensemble(
    data: Input[Dataset],
    members: Input[List[Model]],  # noqa: UP006
    config: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Stage 6: combine the trained members into one calibrated model."""
    from hemaflow.components import ensemble as stage
    from hemaflow.pipeline import steps

    member_dirs = [steps.location(m) for m in members]
    result = stage.run(steps.location(data), member_dirs, steps.location(model), steps.load(config))
    model.metadata["members"] = len(member_dirs)
    steps.log_metrics(metrics, result)


def evaluate(
    model: Input[Model],
    data: Input[Dataset],
    config: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    card: Output[Markdown],
):
    """Stage 7: clean, Bmk and corruption-suite metrics, report and model card."""
    from hemaflow.components import evaluate as stage
    from hemaflow.pipeline import steps

    out = steps.location(evaluation)
    result = stage.run(steps.location(model), steps.location(data), out, steps.load(config))
    steps.log_metrics(metrics, result)
    steps.confusion_matrix(out, confusion)
    steps.copy_file(out, "report.html", report)
    steps.copy_file(out, "model_card.md", card)


#: Component name (as tasks appear in the DAG) -> wrapper function.
WRAPPERS = {
    "configure": configure,
    "ingest": ingest,
    "balance-and-augment": balance_and_augment,
    "compare": compare,
    "select-top-k": select_top_k,
    "tune": tune,
    "train": train,
    "plan": plan,
    "plan-config": plan_config,
    "train-member": train_member,
    "ensemble": ensemble,
    "evaluate": evaluate,
}


def make_components(image: str) -> dict:
    """All stage components built on one image, installing nothing at run time."""
    return {
        name: dsl.component(func=fn, base_image=image, install_kfp_package=False)
        for name, fn in WRAPPERS.items()
    }
