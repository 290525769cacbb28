"""``hemaflow image build``: the container image every stage runs in, built with the Docker SDK."""

from __future__ import annotations

import argparse
from pathlib import Path

from hemaflow.errors import HemaflowError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "image",
        help="build and push the container image",
        description="Build the image that runs every stage (docker/Dockerfile, or "
        "docker/Dockerfile.gpu with --gpu), tagged by version and git revision.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="build (and optionally push) the image")
    build.add_argument(
        "--gpu", action="store_true", help="the CUDA variant (docker/Dockerfile.gpu)"
    )
    build.add_argument(
        "--tag", metavar="REPO[:TAG]", help="extra reference; version tags go on its repository"
    )
    build.add_argument("--push", action="store_true", help="push every tag after the build")
    build.add_argument("--base-image", metavar="IMAGE", help="override the Dockerfile's BASE_IMAGE")
    build.add_argument(
        "--ca-cert",
        type=Path,
        metavar="FILE",
        help="CA bundle for a TLS-intercepting proxy; used while building, never in the image",
    )
    build.add_argument(
        "--build-arg", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    build.add_argument("--network", metavar="MODE", help="network for RUN steps, e.g. host")
    build.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from hemaflow.pipeline import image

    extra = {}
    for item in args.build_arg:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise HemaflowError(f"--build-arg {item!r}: expected KEY=VALUE")
        extra[key] = value
    _, tags = image.build_image(
        gpu=args.gpu,
        tag=args.tag,
        base_image=args.base_image,
        ca_cert=args.ca_cert,
        build_args=extra,
        network_mode=args.network,
        nocache=args.no_cache,
    )
    if args.push:
        for reference in tags:
            image.push_image(reference)
    return 0
