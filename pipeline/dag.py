"""The hemaflow DAG: ingest -> augment -> compare (fan-out) -> top k -> tune+train (fan-out)
-> ensemble -> evaluate.

The resolved config is the pipeline's one parameter, ``config``: the whole config as JSON,
its default the config the pipeline was built for. The first task, ``configure``, validates
it (so a run whose ``config`` was changed at submission stops before any data is read) and
hands its canonical JSON to every other task; nothing inside the run reads a profile file,
so a compiled pipeline reproduces its run whatever profiles the image ships.

With ``budget.minutes`` > 0 a ``plan`` task follows tune: from what compare measured on this
machine and the time left it decides the members (backbone, seed, epochs, deadline), and the
training fan-out runs over its list (:mod:`hemaflow.planning`). Without a budget the DAG is
the one above.

The fan-outs live in a nested pipeline, ``select-and-train``, that receives the config and
the backbones as its own inputs. Besides grouping the model-building half of the DAG, this
keeps every value entering a ParallelFor a pipeline input: kfp.local (2.17) substitutes the
loop item for any *task output* parameter passed into a loop, which would hand the config of
``configure`` to the loop body as a backbone name.

:func:`build_pipeline` also gives every task the config's resources for the chosen backend.
"""

# No "from __future__ import annotations": KFP reads the pipeline function's annotations.

from typing import Any, NamedTuple

from hemaflow.pipeline import resources
from hemaflow.pipeline.resources import Target

from hemaflow.config import Config


def build_pipeline(config: Config, target: Target = "kubeflow", local: bool = False) -> Any:
    """The KFP pipeline (a GraphComponent) for ``config`` on ``target``.

    ``local``: for kfp.local, which cannot resolve the job-creation-time placeholder (2.17
    reads every ``{{$.…}}`` as an input path); a local run's clock is ``budget.deadline``.
    """
    from typing import List  # noqa: UP035 - KFP's type parser knows typing.List

    from hemaflow.pipeline.tasks import make_components
    from kfp import dsl
    from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model

    ops = make_components(config.pipeline.image)
    caching = config.pipeline.caching
    parallelism = config.pipeline.parallelism

    def task(name: str, **kwargs: Any) -> Any:
        t = ops[name](**kwargs)
        section = resources.for_task(config, BUDGET_TASK_RESOURCES.get(name, name))
        resources.apply(t, section, target, caching)
        return t

    class Outputs(NamedTuple):
        model: Model
        metrics: Metrics
        report: HTML
        evaluation: Artifact

    # Inside the pipeline functions below, ``config`` is the parameter (JSON), not the Config.
    defaults = parameters(config)
    config_budget = config.budget
    budgeted = config.budget.minutes > 0
    # Where members share the machine's cores, one at a time: the plan's deadlines assume it.
    # Compare too, since the plan scales the speed compare measured to the members' epochs:
    # two candidates timed side by side on 2 cores each read half this machine's speed.
    timed_parallelism = 1 if budgeted and not config_budget.parallel_members else parallelism

    @dsl.pipeline(name="select-and-train")
    def select_and_train(
        data: Input[Dataset],
        backbones: List[str],  # noqa: UP006
        config: str,
    ) -> Model:
        """Compare every candidate, keep the top k, tune and train them, ensemble them."""
        with dsl.ParallelFor(backbones, parallelism=timed_parallelism) as candidate:
            cmp = task("compare", data=data, backbone=candidate, config=config)
        top = task("select-top-k", results=dsl.Collected(cmp.outputs["Output"]), config=config)
        if budgeted:
            # Tune as configured, then the plan; its members drive the training fan-out.
            with dsl.ParallelFor(top.output, parallelism=parallelism) as chosen:
                tun = task("tune", data=data, backbone=chosen, config=config)
            plan = task(
                "plan",
                data=data,
                results=dsl.Collected(cmp.outputs["Output"]),
                hparams=dsl.Collected(tun.outputs["hparams"]),
                config=config,
                # A submitted or scheduled run's budget counts from the job's creation.
                created="" if local else dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER,
            )
            with dsl.ParallelFor(plan.outputs["Output"], parallelism=timed_parallelism) as member:
                trn = task(
                    "train-member",
                    data=data,
                    backbone=member.backbone,
                    member=member,
                    config=config,
                )
            members = dsl.Collected(trn.outputs["model"])
            # The plan's config: the test-time views it chose.
            planned = task("plan-config", schedule=plan.outputs["schedule"], config=config).output
            return task("ensemble", data=data, members=members, config=planned).outputs["model"]
        with dsl.ParallelFor(top.output, parallelism=parallelism) as chosen:
            tun = task("tune", data=data, backbone=chosen, config=config)
            trn = task(
                "train", data=data, hparams=tun.outputs["hparams"], backbone=chosen, config=config
            )
        members = dsl.Collected(trn.outputs["model"])
        return task("ensemble", data=data, members=members, config=config).outputs["model"]

    def hemaflow(config: str = defaults["config"]) -> Outputs:
        conf = task("configure", config=config)
        checked = conf.outputs["config"]
        ing = task("ingest", config=checked)
        aug = task("balance-and-augment", dataset=ing.outputs["dataset"], config=checked)
        data = aug.outputs["tfrecords"]
        models = select_and_train(data=data, backbones=conf.outputs["backbones"], config=checked)
        ev = task("evaluate", model=models.output, data=data, config=checked)
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


#: Tasks of a time-limited run, and the task whose resources section each uses.
BUDGET_TASK_RESOURCES = {
    "plan": "select-top-k",
    "plan-config": "select-top-k",
    "train-member": "train",
}


def parameters(config: Config) -> dict[str, Any]:
    """The pipeline parameters that reproduce ``config`` (what run, submit and schedule send)."""
    return {"config": config.to_json()}
