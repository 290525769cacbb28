"""``hemaflow predict``: class and probabilities per image, for a folder, an .npz or one image."""

from __future__ import annotations

import argparse

from hemaflow.pipeline.commands._common import add_config_options, config_from_args, stage_parser

DESCRIPTION = """\
Run MODEL on every image of SOURCE and write one CSV row per image: the file
(or .npz key and index), the predicted class name and the probability of every
class. Images are resized to the model's working size as ingest does.

MODEL is a Model folder (train or ensemble output) or a .keras file (class
names come from the manifest.json beside it, else class_0, class_1, ...).
SOURCE is a folder (searched recursively for JPEG/PNG/TIFF), an .npz with
'images' (or MedMNIST '*_images') or a single image file. The CSV goes to
--out, written whole or not at all, or to standard output."""

EXAMPLES = """\
examples:
  hemaflow predict runs/ensemble cell.jpg
  hemaflow predict runs/ensemble new_images/ --out predictions.csv"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(
        subparsers,
        "predict",
        "predict the class of images in a folder, an .npz or one file",
        DESCRIPTION,
        EXAMPLES,
    )
    parser.add_argument("model", metavar="MODEL", help="Model folder or .keras file")
    parser.add_argument("source", metavar="SOURCE", help="image folder, .npz or image file")
    parser.add_argument(
        "--out", default="-", metavar="CSV", help="write the CSV here (default: - for stdout)"
    )
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.components import predict

    result = predict.run(args.model, args.source, args.out, config_from_args(args))
    if args.out != predict.STDOUT:
        print(f"{result['images']} predictions written to {args.out}")
    return 0
