"""``hemaflow ingest``: read a source into a checked, split Dataset folder."""

from __future__ import annotations

import argparse

from hemaflow.pipeline.commands._common import add_config_options, config_from_args, stage_parser

DESCRIPTION = """\
Read a data source, decode and resize its images to the working size, check them
(exact and near duplicates, label conflicts, outliers that are not blood cells),
drop what data.drop says, split stratified into train/val/test with the config's
seed, and write a Dataset folder: train/val/test .npz, manifest.json, metrics.json
(counts and every finding) and report.html.

SOURCE is one of:
  PATH/                a folder of class sub-folders with JPEG/PNG/TIFF images
  FILE.npz             challenge layout (images, labels[, class_names]) or
                       MedMNIST layout (train_images, train_labels, val_*, test_*)
  bloodmnist:SIZE      BloodMNIST (MedMNIST+) at 28, 64, 128 or 224 px, downloaded
                       once into the cache and MD5-verified
                       (mirror: set HEMAFLOW_BLOODMNIST_URL)
  default              the embedded synthetic images (labelled synthetic)
  gs://BUCKET/...      any of the file or folder sources above on GCS
Without SOURCE, the config's data.source is used.

Settings (--set data.KEY=VALUE):
  data.image_size             working size (same as --size)
  data.split.val, .test       shares of each class for val and test (default 0.15)
  data.on_bad_image           error | skip (skip lists unreadable images in the report)
  data.drop.exact_duplicates  drop all but one of identical pictures (default true)
  data.drop.near_duplicates   drop all but one of near-identical pictures (default false)
  data.drop.label_conflicts   drop pictures filed under two labels (default true)
  data.drop.outliers          drop pictures that are not blood cells (default true)
  data.near_duplicate_distance  pHash bits two near duplicates may differ in (default 4)
  data.outlier_threshold      robust z-score above which an image is an outlier (6)
  data.synthetic_per_class    images per class of the 'default' source
  data.cache_dir              download cache (default: $HEMAFLOW_CACHE or ~/.cache/hemaflow)"""

EXAMPLES = """\
examples:
  hemaflow ingest ../shared/data/pbc128 --out runs/pbc64 --size 64 --profile cpu
  hemaflow ingest bloodmnist:64 --out runs/bloodmnist64
  hemaflow ingest default --out runs/synthetic --set data.synthetic_per_class=100
  hemaflow ingest images/ --out runs/ds --set data.on_bad_image=skip --set data.drop.near_duplicates=true"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(
        subparsers,
        "ingest",
        "read, check and split a data source into a Dataset folder",
        DESCRIPTION,
        EXAMPLES,
    )
    parser.add_argument(
        "source", nargs="?", metavar="SOURCE", help="what to read (see above; default: data.source)"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output Dataset folder (local or gs://)"
    )
    parser.add_argument(
        "--size",
        type=int,
        metavar="N",
        help="working image size in pixels (sets data.image_size, e.g. 64, 96, 128)",
    )
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.components import ingest

    config = config_from_args(args, **{"data.image_size": args.size})
    print(format_summary(ingest.run(args.source or config.data.source, args.out, config)))
    return 0


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: where, how many per split, what was found."""
    totals = ", ".join(f"{name} {count}" for name, count in summary["totals"].items())
    found = ", ".join(
        f"{k.replace('_', ' ')} {v}" for k, v in summary["finding_counts"].items() if v
    )
    lines = [
        f"dataset written to {summary['out_dir']} ({summary['image_size']} px, "
        f"{len(summary['class_names'])} classes{', SYNTHETIC' if summary['synthetic'] else ''})",
        f"  images: {totals}",
        f"  findings: {found or 'none'}",
        "  details: report.html and metrics.json in the output folder",
    ]
    return "\n".join(lines)
