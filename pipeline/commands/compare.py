"""``hemaflow compare``: a few epochs of one candidate backbone, scored on val and Bmk-val."""

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
Train one backbone for compare.epochs on a TFRecord folder from `hemaflow augment`: the
head only (frozen backbone) with pretrained model.weights, the whole network from scratch
without. Writes metrics.json (val and Bmk-val accuracy, parameters, training and inference
images/s, dtype policy, history) and report.html to --out. Run it once per candidate (a pipeline
runs them in parallel) and pick the best with compare.top_k and compare.criterion."""

EXAMPLES = """\
examples:
  hemaflow compare runs/tfr --backbone resnet_mini --out runs/compare/resnet_mini --profile cpu
  hemaflow compare runs/tfr --backbone resnet50 --out gs://bucket/compare/resnet50 --profile gpu"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = stage_parser(
        subparsers, "compare", "score one candidate backbone (a few epochs)", DESCRIPTION, EXAMPLES
    )
    add_backbone_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.components import compare

    result = compare.run(args.data_dir, args.backbone, args.out, config_from_args(args))
    print(json.dumps({k: result[k] for k in compare.RESULT_KEYS}, indent=2))
    return 0
