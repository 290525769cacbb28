"""``hemaflow ensemble``: combine trained Model folders into one calibrated model."""

from __future__ import annotations

import argparse

from hemaflow.pipeline.commands._common import add_config_options, config_from_args, stage_parser

DESCRIPTION = """\
Load the member models safely, score them once on the val split of DATA_DIR,
fit member weights (softmax-parameterised, minimising val log-loss) and a
temperature (minimising val NLL), and export ONE Model folder that takes raw
uint8 images of any size and returns calibrated class probabilities, with
metrics.json (members and ensemble on val) and report.html.

DATA_DIR is a balance-and-augment TFRecord folder or an ingest Dataset folder;
every member must have been trained on its classes and image size."""

EXAMPLES = """\
examples:
  hemaflow ensemble runs/tfrecords --member runs/train-resnet_mini --member runs/train-small_cnn --out runs/ensemble
  hemaflow ensemble runs/tfrecords --member m1 --member m2 --out runs/ens --set ensemble.calibrate=false"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(
        subparsers,
        "ensemble",
        "fit weights and a temperature on val and export one ensemble model",
        DESCRIPTION,
        EXAMPLES,
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="TFRecord or Dataset folder")
    parser.add_argument(
        "--member",
        dest="members",
        action="append",
        required=True,
        metavar="DIR",
        help="a member Model folder (repeat for each member)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output Model folder")
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.components import ensemble

    result = ensemble.run(args.data_dir, args.members, args.out, config_from_args(args))
    weights = ", ".join(f"{w:.3f}" for w in result["weights"])
    print(
        f"ensemble written to {args.out}\n"
        f"  weights: {weights}; temperature {result['temperature']:.3f}\n"
        f"  val accuracy {result['val_accuracy']:.4f}, log-loss {result['val_log_loss']:.4f} "
        f"(best member {result['best_member_val_log_loss']:.4f}), ECE {result['val_ece']:.4f}"
    )
    return 0
