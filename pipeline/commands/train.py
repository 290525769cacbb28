"""``hemaflow train``: final training of one backbone, exported as a Model folder."""

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
Train one backbone on a TFRecord folder with the hyperparameters of --hparams (the
output folder of `hemaflow tune`, or its hparams.json or another JSON file; the
config's train.* and model.head without):
a frozen warm-up of train.warmup_epochs, then fine-tuning of the top unfrozen layers at
train.fine_tune_learning_rate (from scratch: the whole network at train.learning_rate),
with early stopping on val accuracy. Every epoch is checkpointed in train.checkpoint_dir
(default: a work folder beside --out): run the same command again after an interruption
and it resumes at the last finished epoch. Exports model.keras, saved_model/,
manifest.json, history.json, curves.png, metrics.json and report.html to --out."""

EXAMPLES = """\
examples:
  hemaflow train runs/tfr --backbone resnet_mini --out runs/models/resnet_mini --profile cpu
  hemaflow train runs/tfr --backbone resnet50 --hparams runs/tune/r50 --out runs/models/r50"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(
        subparsers, "train", "train one backbone and export the model", DESCRIPTION, EXAMPLES
    )
    add_backbone_arguments(parser)
    parser.add_argument(
        "--hparams",
        default="",
        metavar="PATH",
        help="a `hemaflow tune` output folder or a JSON file of hyperparameters",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output Model folder")
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.components import train

    config = config_from_args(args)
    print(
        json.dumps(
            train.run(args.data_dir, args.backbone, args.hparams, args.out, config), indent=2
        )
    )
    return 0
