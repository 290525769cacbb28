"""``hemaflow weights``: fill a mirror of Keras's pretrained backbone files, or check one.

A cluster without internet egress cannot let Keras download ImageNet weights in each pod.
``fetch`` downloads each backbone's file once, from a machine that can, verifies it against the
hash Keras publishes and writes it under Keras's own file name to a folder or gs:// prefix;
``model.weights`` pointing there then serves every backbone. ``check`` does what a stage does
before training: finds, verifies and loads each backbone's file from a mirror.
"""

from __future__ import annotations

import argparse
import json

from hemaflow.pipeline.commands._common import add_config_options, config_from_args

EXAMPLES = """examples:
  hemaflow weights fetch --backbone resnet50 efficientnet_b6 --to gs://my-bucket/keras-weights
  hemaflow weights fetch --profile gpu --to /mnt/weights          # every gpu-profile backbone
  hemaflow weights fetch --backbone convnext_tiny --to weights/ --from https://mirror.internal/keras
  hemaflow weights check --profile gpu --set model.weights=gs://my-bucket/keras-weights
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="mirror Keras's pretrained backbone weights for clusters without internet",
        description="Fill a weights mirror (a folder or gs:// prefix with one file per "
        "backbone under Keras's own file name, plus weights.json) and point model.weights "
        "at it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="download, verify and mirror backbone weights",
        description="Download each backbone's weights file (include_top=False) from Keras's "
        "origin or --from, verify it against Keras's published hash (md5 or sha256), and "
        "write it atomically to the mirror, with its hash and size in weights.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_backbone_options(fetch)
    fetch.add_argument("--to", required=True, metavar="DIR|gs://...", help="the mirror")
    fetch.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        help="fetch URL/<Keras file name> instead of Keras's origin (an internal HTTP "
        "mirror, a folder such as ~/.keras/models, or gs://)",
    )
    add_config_options(fetch)
    fetch.set_defaults(func=run_fetch)

    check = actions.add_parser(
        "check",
        help="verify and load each backbone's weights as a stage would",
        description="Find each backbone's file in model.weights, verify its hash and load it "
        "into the backbone, without data or training.",
    )
    _add_backbone_options(check)
    add_config_options(check)
    check.set_defaults(func=run_check)


def _add_backbone_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        dest="backbones",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="zoo backbone(s) (repeatable; default: the config's model.backbones that "
        "have Keras weights)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="input size in px (default: data.image_size); some file names depend on it",
    )


def _specs(args: argparse.Namespace) -> tuple[dict, int, str]:
    """The backbones asked for (name -> how it is built), the image size and model.weights.

    Named backbones must have a Keras file; from the config, from-scratch ones are skipped.
    """
    from hemaflow.errors import HemaflowError
    from hemaflow.modeling import weights, zoo

    config = config_from_args(args)
    size = args.image_size or config.data.image_size
    known = zoo.known_backbones()
    pretrainable = [b for b in known if zoo.is_pretrainable(b)]
    if args.backbones:
        for backbone in args.backbones:
            if backbone not in pretrainable:
                raise weights.no_keras_file(backbone, backbone in known, pretrainable)
        names = list(dict.fromkeys(args.backbones))
    else:
        names = [b for b in config.model.backbones if b in pretrainable]
        if not names:
            raise HemaflowError(
                f"the config's backbones ({', '.join(config.model.backbones)}) have no Keras "
                "weights files; name some with --backbone"
            )
    return {b: zoo.backbone_spec(b) for b in names}, size, config.model.weights


def run_fetch(args: argparse.Namespace) -> int:
    from hemaflow.modeling import weights

    specs, size, _ = _specs(args)
    fetched = weights.fetch(specs, args.to, size, source=args.source)
    for entry in fetched:
        note = "" if entry["published"] else " (no published hash; sha256 recorded)"
        print(f"{entry['backbone']}: {entry['file']} {entry['algorithm']} {entry['hash']}{note}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from hemaflow.modeling import zoo

    specs, size, value = _specs(args)
    results = []
    for backbone in specs:
        model = zoo.build_model(backbone, 2, size, weights=value)
        results.append({"backbone": backbone, "weights": value, "params": model.count_params()})
    print(json.dumps(results, indent=1))
    return 0
