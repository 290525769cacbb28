"""``hemaflow augment``: balance and augment a Dataset folder into sharded TFRecords."""

from __future__ import annotations

import argparse

from hemaflow.pipeline.commands._common import add_config_options, config_from_args, stage_parser

DESCRIPTION = """\
Read a Dataset folder written by `hemaflow ingest`, balance the training split by
oversampling minority classes with augmentation (up to the majority count, or
augment.balance_to), add augment.copies augmented copies per image and, unless
augment.mix.kind is none, one CutMix/MixUp copy with soft labels. The originals are
kept. Writes GZIP TFRecord shards for train (shuffled), val and test (unaugmented)
and bmk (the test split through augment.bmk_policy), plus manifest.json,
metrics.json and report.html with sample grids of every augmentation family.

Runs as an Apache Beam pipeline: DirectRunner by default; set augment.runner and
augment.runner_options (passed to Beam's PipelineOptions) for Dataflow, Flink or
Spark. The same Dataset and seed always give the same records."""

EXAMPLES = """\
examples:
  hemaflow augment runs/pbc64 --out runs/pbc64-tfr --profile cpu
  hemaflow augment runs/pbc64 --out runs/pbc64-tfr --set augment.copies=2 --set augment.mix.kind=mixup
  hemaflow augment runs/pbc64 --out runs/tfr --set augment.policy.randaugment.p=0.5
  hemaflow augment runs/pbc64 --out runs/tfr --set 'augment.runner_options=["--direct_num_workers=2"]'"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(
        subparsers,
        "augment",
        "balance and augment a Dataset into sharded TFRecords (Apache Beam)",
        DESCRIPTION,
        EXAMPLES,
    )
    parser.add_argument(
        "dataset_dir", metavar="DATASET_DIR", help="a Dataset folder from `hemaflow ingest`"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output TFRecord folder (local or gs://)"
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="seed of every augmentation draw (sets seed)"
    )
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.components import augment

    config = config_from_args(args, seed=args.seed)
    print(format_summary(augment.run(args.dataset_dir, args.out, config)))
    return 0


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: where, how many records per split, how fast."""
    totals = ", ".join(f"{name} {count}" for name, count in summary["totals"].items())
    mix = ", ".join(f"{k} {v}" for k, v in summary["train_composition"].items())
    lines = [
        f"TFRecords written to {summary['out_dir']}"
        f"{' (SYNTHETIC data)' if summary['synthetic'] else ''}",
        f"  records: {totals}",
        f"  train: {mix}",
        f"  {summary['seconds']} s, {summary['images_per_s']} images/s",
        "  details: manifest.json, metrics.json and report.html in the output folder",
    ]
    return "\n".join(lines)
