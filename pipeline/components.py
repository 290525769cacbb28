"""The KFP components: one thin wrapper per stage around the installed stage function.

Every wrapper is a lightweight Python component whose body loads the config (profile + JSON
overrides) and calls one function of :mod:`components` through :mod:`pipeline.steps`. The
same definition runs under ``kfp.local.SubprocessRunner(use_venv=False)`` (the current
environment, where hemaflow is installed), under ``kfp.local.DockerRunner`` and on a cluster
in the project image: :func:`make_components` gives all of them one image and installs
nothing at run time. Resources, retries and caching are set per task by
:mod:`pipeline.resources`.

This module has no ``from __future__ import annotations``: KFP reads the annotations.
"""

from typing import List  # noqa: UP035 - KFP's type parser knows typing.List

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
    profile: str,
    overrides: str,
    source: str,
    backbones: List[str],  # noqa: UP006
    k: int,
    epochs: int,
    trials: int,
    seed: int,
    weights: str,
) -> str:
    """Merge the run's parameters into the config overrides and validate them up front."""
    from hemaflow.pipeline import steps

    return steps.configure(
        profile,
        overrides,
        source=source,
        backbones=backbones,
        k=k,
        epochs=epochs,
        trials=trials,
        seed=seed,
        weights=weights,
    )


def ingest(
    profile: str,
    overrides: str,
    dataset: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Stage 1: read, validate, deduplicate and split the source into a Dataset."""
    from hemaflow.components.ingest import ingest as run

    # isort: split
    from hemaflow.pipeline import steps

    config = steps.load(profile, overrides)
    out = steps.location(dataset)
    result = run(config.data.source, out, config)
    steps.copy_file(out, "report.html", report)
    steps.log_metrics(metrics, result)


def balance_and_augment(
    dataset: Input[Dataset],
    profile: str,
    overrides: str,
    tfrecords: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Stage 2: balance classes with augmentation and write sharded TFRecords (+ Bmk)."""
    from hemaflow.components.augment import balance_and_augment as run

    # isort: split
    from hemaflow.pipeline import steps

    config = steps.load(profile, overrides)
    out = steps.location(tfrecords)
    result = run(steps.location(dataset), out, config)
    steps.copy_file(out, "report.html", report)
    steps.log_metrics(metrics, result)


def compare(
    data: Input[Dataset],
    backbone: str,
    profile: str,
    overrides: str,
    result: Output[Artifact],
    metrics: Output[Metrics],
) -> dict:
    """Stage 3: a few epochs of one candidate backbone; its scores feed select-top-k."""
    from hemaflow.components.compare import compare_backbone

    # isort: split
    from hemaflow.pipeline import steps

    config = steps.load(profile, overrides)
    scores = compare_backbone(steps.location(data), backbone, steps.location(result), config)
    steps.log_metrics(metrics, scores)
    return steps.json_safe(scores)


def select_top_k(
    results: List[dict],  # noqa: UP006
    k: int,
    profile: str,
    overrides: str,
) -> List[str]:  # noqa: UP006
    """The k best candidates by the profile's criterion."""
    from hemaflow.components.compare import select_top_k as pick

    # isort: split
    from hemaflow.pipeline import steps

    config = steps.load(profile, overrides)
    return list(pick(list(results), k, config.compare.criterion))


def tune(
    data: Input[Dataset],
    backbone: str,
    profile: str,
    overrides: str,
    hparams: Output[Artifact],
    metrics: Output[Metrics],
):
    """Stage 4: keras-tuner search for one backbone; best_hparams.json is the artifact."""
    from hemaflow.components.tune import tune_backbone

    # isort: split
    from hemaflow.pipeline import steps

    config = steps.load(profile, overrides)
    best = tune_backbone(steps.location(data), backbone, steps.location(hparams), config)
    steps.log_metrics(metrics, best)


def train(
    data: Input[Dataset],
    hparams: Input[Artifact],
    backbone: str,
    profile: str,
    overrides: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Stage 5: final training of one backbone with its tuned hyperparameters."""
    from hemaflow.components.train import train_backbone

    # isort: split
    from hemaflow.pipeline import steps

    from hemaflow import storage

    config = steps.load(profile, overrides)
    best = storage.join(steps.location(hparams), "best_hparams.json")
    result = train_backbone(steps.location(data), backbone, best, steps.location(model), config)
    model.metadata["backbone"] = backbone
    steps.log_metrics(metrics, result)


def ensemble(
    data: Input[Dataset],
    members: Input[List[Model]],  # noqa: UP006
    profile: str,
    overrides: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Stage 6: combine the trained members into one calibrated model."""
    from hemaflow.components.ensemble import build_ensemble

    # isort: split
    from hemaflow.pipeline import steps

    config = steps.load(profile, overrides)
    member_dirs = [steps.location(m) for m in members]
    result = build_ensemble(steps.location(data), member_dirs, steps.location(model), config)
    model.metadata["members"] = len(member_dirs)
    steps.log_metrics(metrics, result)


def evaluate(
    model: Input[Model],
    data: Input[Dataset],
    profile: str,
    overrides: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    card: Output[Markdown],
):
    """Stage 7: clean, Bmk and corruption-suite metrics, report and model card."""
    from hemaflow.components.evaluate import evaluate as run

    # isort: split
    from hemaflow.pipeline import steps

    config = steps.load(profile, overrides)
    out = steps.location(evaluation)
    result = run(steps.location(model), steps.location(data), out, config)
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
    "ensemble": ensemble,
    "evaluate": evaluate,
}


def make_components(image: str) -> dict:
    """All stage components built on one image, installing nothing at run time."""
    return {
        name: dsl.component(func=fn, base_image=image, install_kfp_package=False)
        for name, fn in WRAPPERS.items()
    }
