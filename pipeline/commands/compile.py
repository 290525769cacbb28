"""``hemaflow compile``: the pipeline as KFP IR YAML, deterministic for the same inputs."""

from __future__ import annotations

import argparse

from hemaflow.pipeline.commands._common import add_config_options, config_from_args
from hemaflow.pipeline.resources import TARGETS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="compile the pipeline to KFP IR YAML",
        description="Compile the DAG for a profile to a KFP IR YAML file that Kubeflow "
        "Pipelines or Vertex AI run. The same inputs give a byte-identical file.",
    )
    add_config_options(parser)
    parser.add_argument("--data", help="default data source baked into the file")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="kubeflow",
        help="backend the accelerator and node-pool settings are written for (kubeflow)",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the YAML")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.pipeline.compiler import compile_pipeline, load_ir

    from hemaflow import storage

    storage.check_output(args.out, "file", inputs=[args.config])
    config = config_from_args(args, **{"data.source": args.data})
    path = compile_pipeline(config, args.out, args.target)
    ir = load_ir(path)
    tasks = len(ir["deploymentSpec"]["executors"])
    print(f"compiled {config.pipeline.name} ({config.profile}, {args.target}, {tasks} components)")
    print(f"  -> {path}")
    return 0
