"""``hemaflow predict``: class and probabilities per image, for a folder, an .npz or one image."""

from __future__ import annotations

import argparse
import csv
import io

from hemaflow.pipeline.commands._common import add_config_options, config_from_args, stage_parser

DESCRIPTION = """\
Run MODEL on every image of SOURCE and write one CSV row per image: the file
(or .npz key and index), the predicted class name and the probability of every
class. Images are resized to the model's working size as ingest does.

MODEL is a Model folder (train or ensemble output) or a .keras file (class
names come from the manifest.json beside it, else class_0, class_1, ...). SOURCE is a folder (searched recursively for JPEG/PNG/TIFF), an
.npz with 'images' (or MedMNIST '*_images') or a single image file."""

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
    parser.add_argument("--out", metavar="CSV", help="write the CSV here (default: stdout)")
    add_config_options(parser)
    parser.set_defaults(func=run)


def predictions_csv(ids, probs, class_names: list[str]) -> str:
    """CSV text: file, predicted, then one probability column per class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "predicted", *(f"p_{name}" for name in class_names)])
    for source_id, row in zip(ids, probs, strict=True):
        writer.writerow(
            [source_id, class_names[int(row.argmax())], *(f"{float(p):.6f}" for p in row)]
        )
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    from hemaflow import storage
    from hemaflow.modeling import inference, loading

    config = config_from_args(args)
    model = loading.load_model(args.model)
    class_names, size = loading.model_class_names(args.model, model)
    if not size:
        raise ValueError(f"{args.model}: no manifest.json and no fixed input size; cannot resize")
    data = inference.read_images_for_prediction(args.source, size)
    probs = inference.predict_arrays(model, data.images, config.evaluate.batch_size)
    text = predictions_csv(data.ids, probs, class_names)
    if args.out:
        storage.write_text_atomic(args.out, text)
        print(f"{len(data.ids)} predictions written to {args.out}")
    else:
        print(text, end="")
    return 0
