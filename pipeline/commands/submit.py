"""``hemaflow submit``: a run on Kubeflow Pipelines or Vertex AI."""

from __future__ import annotations

import argparse

from hemaflow.pipeline.commands._backend import add_backend_options, run_config, run_options
from hemaflow.pipeline.commands._common import add_config_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="submit a run to Kubeflow Pipelines or Vertex AI",
        description="Submit the pipeline (compiled file or compiled now) with the resolved "
        "config as its one parameter; prints the run's id and URL. Backbones, k and the "
        "pipeline root are checked before anything is sent.",
    )
    add_config_options(parser)
    add_backend_options(parser)
    parser.add_argument("--run-name", help="name of the run (default: generated)")
    parser.add_argument(
        "--tensorboard",
        metavar="RESOURCE",
        help="Vertex AI only: a TensorBoard (projects/P/locations/R/tensorboards/ID); the run "
        "joins the experiment named by --experiment, backed by this TensorBoard",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.pipeline.submit import submit

    config = run_config(args)
    options = run_options(args)
    options["run_name"] = args.run_name
    if args.tensorboard:
        options.update(tensorboard=args.tensorboard, experiment=args.experiment)
    result = submit(
        config, args.backend, package=args.package, caching=not args.no_cache, **options
    )
    print(f"submitted to {result.backend}: {result.id}")
    print(f"  {result.url}")
    return 0
