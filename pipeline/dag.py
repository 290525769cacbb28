"""The hemaflow DAG: ingest -> augment -> compare (fan-out) -> top k -> tune+train (fan-out)
-> ensemble -> evaluate.

The fan-outs live in a nested pipeline, ``select-and-train``, that receives the validated
overrides as its own input. Besides grouping the model-building half of the DAG, this keeps
every value entering a ParallelFor a pipeline input: kfp.local (2.17) substitutes the loop
item for any *task output* parameter passed into a loop, which would hand the overrides of
``configure`` to the loop body as a backbone name.

:func:`build_pipeline` turns a validated config into a KFP pipeline whose parameter defaults
are that config, and whose tasks carry the config's resources for the chosen backend. The
tasks receive the profile name and a JSON overrides string; the first task, ``configure``,
merges the run's parameters into it and validates the result, so a bad value stops the run
before any data is read.
"""

# No "from __future__ import annotations": KFP reads the pipeline function's annotations.

import json
from typing import Any, NamedTuple

from hemaflow.pipeline import resources
from hemaflow.pipeline.resources import Target

from hemaflow.config import Config


def build_pipeline(config: Config, target: Target = "kubeflow") -> Any:
    """The KFP pipeline (a GraphComponent) for ``config`` on ``target``."""
    from typing import List  # noqa: UP035 - KFP's type parser knows typing.List

    from hemaflow.pipeline.components import make_components
    from kfp import dsl
    from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model

    ops = make_components(config.pipeline.image)
    caching = config.pipeline.caching
    parallelism = config.pipeline.parallelism

    def task(name: str, **kwargs: Any) -> Any:
        t = ops[name](**kwargs)
        resources.apply(t, resources.for_task(config, name), target, caching)
        return t

    class Outputs(NamedTuple):
        model: Model
        metrics: Metrics
        report: HTML
        evaluation: Artifact

    defaults = parameters(config)

    @dsl.pipeline(name="select-and-train")
    def select_and_train(
        data: Input[Dataset],
        backbones: List[str],  # noqa: UP006
        k: int,
        profile: str,
        overrides: str,
    ) -> Model:
        """Compare every candidate, keep the top k, tune and train them, ensemble them."""
        common = {"profile": profile, "overrides": overrides}
        with dsl.ParallelFor(backbones, parallelism=parallelism) as candidate:
            cmp = task("compare", data=data, backbone=candidate, **common)
        top = task("select-top-k", results=dsl.Collected(cmp.outputs["Output"]), k=k, **common)
        with dsl.ParallelFor(top.output, parallelism=parallelism) as chosen:
            tun = task("tune", data=data, backbone=chosen, **common)
            trn = task(
                "train", data=data, hparams=tun.outputs["hparams"], backbone=chosen, **common
            )
        ens = task("ensemble", data=data, members=dsl.Collected(trn.outputs["model"]), **common)
        return ens.outputs["model"]

    def hemaflow(
        source: str = defaults["source"],
        profile: str = defaults["profile"],
        backbones: List[str] = defaults["backbones"],  # noqa: UP006
        k: int = defaults["k"],
        epochs: int = defaults["epochs"],
        trials: int = defaults["trials"],
        seed: int = defaults["seed"],
        weights: str = defaults["weights"],
        overrides: str = defaults["overrides"],
    ) -> Outputs:
        conf = task(
            "configure",
            profile=profile,
            overrides=overrides,
            source=source,
            backbones=backbones,
            k=k,
            epochs=epochs,
            trials=trials,
            seed=seed,
            weights=weights,
        )
        common = {"profile": profile, "overrides": conf.output}
        ing = task("ingest", **common)
        aug = task("balance-and-augment", dataset=ing.outputs["dataset"], **common)
        data = aug.outputs["tfrecords"]
        models = select_and_train(data=data, backbones=backbones, k=k, **common)
        ev = task("evaluate", model=models.output, data=data, **common)
        return Outputs(
            model=models.output,
            metrics=ev.outputs["metrics"],
            report=ev.outputs["report"],
            evaluation=ev.outputs["evaluation"],
        )

    return dsl.pipeline(
        hemaflow,
        name=config.pipeline.name,
        description="Train, tune, ensemble and stress-test blood cell classifiers "
        f"(profile {config.profile}, target {target}).",
        pipeline_root=config.pipeline.pipeline_root or None,
    )


def parameters(config: Config) -> dict[str, Any]:
    """The pipeline parameters that reproduce ``config`` (what submit sends)."""
    from hemaflow.pipeline import steps

    return {
        "source": config.data.source,
        "profile": config.profile,
        "backbones": list(config.model.backbones),
        "k": config.compare.top_k,
        "epochs": config.train.epochs,
        "trials": config.tune.max_trials,
        "seed": config.seed,
        "weights": config.model.weights,
        "overrides": json.dumps(steps.config_overrides(config), sort_keys=True),
    }
