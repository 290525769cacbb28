"""``hemaflow run``: the whole pipeline on this machine through kfp.local."""

from __future__ import annotations

import argparse

from hemaflow.pipeline.commands._common import add_config_options, config_from_args
from hemaflow.pipeline.runners import RUNNERS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the whole pipeline locally (kfp.local)",
        description="Run every stage, ingest to evaluate, through kfp.local: in this Python "
        "environment (subprocess) or in the project image (docker). Default: the quickstart "
        "profile on the embedded synthetic data.",
    )
    add_config_options(parser)
    parser.add_argument("--data", help="data source (folder, .npz, bloodmnist:SIZE, gs://...)")
    parser.add_argument("--runner", choices=RUNNERS, default="subprocess", help="(subprocess)")
    parser.add_argument(
        "--out", metavar="DIR", help="copy the ensemble (DIR/model), metrics.json, report.html here"
    )
    parser.add_argument(
        "--pipeline-root",
        metavar="DIR",
        help="KFP's artifact root (default: DIR/kfp or ./hemaflow-runs)",
    )
    parser.add_argument("--no-cache", action="store_true", help="rerun every task")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.pipeline.runners import run_local

    config = config_from_args(args, **{"data.source": args.data})
    result = run_local(
        config,
        runner=args.runner,
        out=args.out,
        pipeline_root=args.pipeline_root,
        caching=not args.no_cache,
    )
    shown = ("accuracy", "balanced_accuracy", "bmk_accuracy", "corrupted_accuracy", "ece")
    numbers = ", ".join(
        f"{k} {result.metrics[k]:.3f}"
        for k in shown
        if isinstance(result.metrics.get(k), int | float)
    )
    print(f"hemaflow run finished ({config.profile}): {numbers}")
    print(f"  pipeline root: {result.pipeline_root}")
    print(f"  model:         {result.copied.get('model', result.model)}")
    print(f"  report:        {result.copied.get('report', result.report)}")
    if "metrics" in result.copied:
        print(f"  metrics:       {result.copied['metrics']}")
    return 0
