"""``hemaflow tune``: keras-tuner search of one backbone's training hyperparameters."""

from __future__ import annotations

import argparse
import json

from hemaflow.pipeline.commands._common import (
    add_backbone_arguments,
    add_config_options,
    config_from_args,
    stage_parser,
)

DESCRIPTION = """\
Search head sizes, dropout, optimizer, learning rate and schedule, label smoothing and
(with pretrained weights) how many backbone layers to unfreeze, with tune.algorithm
(hyperband, bayesian or random) within tune.max_trials trials of tune.epochs epochs.
Writes hparams.json (the best hyperparameters; `hemaflow train --hparams` reads
it), metrics.json, trials.json, trials.csv and report.html to --out.
tune.directory (may be gs://) keeps the tuner's state so a re-run continues. Distributed: set KERASTUNER_TUNER_ID (chief, tuner0, ...),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT as keras-tuner documents."""

EXAMPLES = """\
examples:
  hemaflow tune runs/tfr --backbone resnet_mini --out runs/tune/resnet_mini --profile cpu
  hemaflow tune runs/tfr --backbone resnet50 --out runs/tune/r50 --set tune.algorithm=bayesian"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(
        subparsers,
        "tune",
        "tune one backbone's hyperparameters (keras-tuner)",
        DESCRIPTION,
        EXAMPLES,
    )
    add_backbone_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.components import tune

    result = tune.run(args.data_dir, args.backbone, args.out, config_from_args(args))
    print(json.dumps(result, indent=2))
    return 0
