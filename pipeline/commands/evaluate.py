"""``hemaflow evaluate``: metrics, robustness, report and model card for a model on labelled data."""

from __future__ import annotations

import argparse

from hemaflow.pipeline.commands._common import add_config_options, config_from_args, stage_parser

DESCRIPTION = """\
Score MODEL on a labelled SOURCE: accuracy, balanced accuracy, per-class
precision/recall/F1, confusion matrix, calibration (ECE), Bmk when present, and
the corruption suite (evaluate.corruptions x evaluate.severities) summarised
MedMNIST-C style. Writes DIR/metrics.json, DIR/report.html, DIR/model_card.md.

MODEL is a Model folder (train or ensemble output) or a .keras file (class
names from the manifest.json beside it, else class_0, class_1, ...).
SOURCE is one of:
  a TFRecord folder     (balance-and-augment output: test and bmk splits,
                         scored on Beam with tfx-bsl RunInference)
  a Dataset folder      (ingest output: its test split)
  PATH/                 a folder of class sub-folders of images
  PATH/ + labels.csv    a folder of images with labels.csv rows file,label
  FILE.npz              challenge layout (images, labels) or MedMNIST layout"""

EXAMPLES = """\
examples:
  hemaflow evaluate runs/ensemble runs/tfrecords --out runs/eval
  hemaflow evaluate runs/train-resnet_mini ../shared/data/pbc128 --out runs/eval-all --set evaluate.max_images=500
  hemaflow evaluate model.keras images/ --out runs/eval --set evaluate.bn_adaptation=true"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(
        subparsers,
        "evaluate",
        "metrics, corruption robustness, report and model card for a model",
        DESCRIPTION,
        EXAMPLES,
    )
    parser.add_argument("model", metavar="MODEL", help="Model folder or .keras file")
    parser.add_argument("source", metavar="SOURCE", help="labelled data (see above)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--max-images",
        type=int,
        metavar="N",
        help="test images used for the corruption suite (sets evaluate.max_images; 0 = all)",
    )
    add_config_options(parser)
    parser.set_defaults(func=run)


def independent_summary(result: dict) -> str:
    """The independent benchmark's headline: accuracy, severity 5 and worst family."""
    if result.get("independent_accuracy") is None:
        return "off"
    severity5 = result.get("independent_severity5_accuracy")
    return (
        f"accuracy {result['independent_accuracy']:.4f}, severity 5 "
        f"{'n/a' if severity5 is None else f'{severity5:.4f}'}, worst family "
        f"{result['independent_worst_family']} {result['independent_worst_family_accuracy']:.4f}"
    )


def run(args: argparse.Namespace) -> int:
    from hemaflow.components import evaluate

    config = config_from_args(args, **{"evaluate.max_images": args.max_images})
    result = evaluate.run(args.model, args.source, args.out, config)
    bmk = result["bmk_accuracy"]
    print(
        f"evaluation written to {args.out}\n"
        f"  accuracy {result['accuracy']:.4f}, balanced accuracy {result['balanced_accuracy']:.4f}, "
        f"ECE {result['ece']:.4f}\n"
        f"  bmk accuracy {'n/a' if bmk is None else f'{bmk:.4f}'}, corrupted accuracy "
        f"{result['corrupted_accuracy']:.4f} (own suite)\n"
        f"  independent benchmark: {independent_summary(result)}\n"
        "  details: metrics.json, report.html and model_card.md in the output folder"
    )
    return 0
