"""``hemaflow component run STAGE ARGS...``: one stage alone, here or in the image (--docker)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from hemaflow.errors import StageError

STAGES = ("ingest", "augment", "compare", "tune", "train", "ensemble", "evaluate", "predict")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "component",
        help="run one stage as a component (optionally in the container image)",
        description="Run one stage with its own arguments, as a pipeline task would. "
        "With --docker it runs in the image with its local inputs mounted read-only and its "
        "output's folder read-write, as the calling user. --docker and --image may come "
        "anywhere after STAGE.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="run one stage")
    run.add_argument("stage", help="stage command, e.g. ingest, augment, train, evaluate")
    run.add_argument("args", nargs=argparse.REMAINDER, help="the stage's own arguments")
    run.add_argument("--docker", action="store_true", help="run in the container image")
    run.add_argument("--image", help="image to run (default: the config's pipeline.image)")
    run.set_defaults(func=run_component)


def split_runner_options(
    args: list[str], docker: bool, image: str | None
) -> tuple[list[str], bool, str | None]:
    """Take --docker and --image out of the stage's arguments (they may follow STAGE)."""
    rest: list[str] = []
    tokens = iter(args)
    for token in tokens:
        if token == "--docker":
            docker = True
        elif token == "--image":
            image = next(tokens, None)
            if image is None:
                raise StageError("--image: needs an image name")
        elif token.startswith("--image="):
            image = token.split("=", 1)[1]
        else:
            rest.append(token)
    return rest, docker, image


def run_component(args: argparse.Namespace) -> int:
    stage_args, docker, image = split_runner_options(list(args.args), args.docker, args.image)
    if args.stage not in STAGES:
        raise StageError(f"{args.stage!r}: not a stage; choose one of {', '.join(STAGES)}")
    if not docker:
        return subprocess.call([sys.executable, "-m", "hemaflow", args.stage, *stage_args])
    from hemaflow.pipeline.docker_run import run_stage

    from hemaflow.config import PipelineConfig

    code = run_stage(image or PipelineConfig().image, args.stage, stage_args)
    if code:
        print(f"hemaflow component run: {args.stage} exited with status {code}", file=sys.stderr)
    return code
