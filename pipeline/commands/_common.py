"""Options every stage command shares: which profile, which config file, which overrides."""

from __future__ import annotations

import argparse
from typing import Any

from hemaflow import config as cfg


def add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--profile",
        choices=cfg.available_profiles(),
        help="configuration profile to start from, built in or in a folder named by "
        f"${cfg.PROFILES_ENV} (default: the config file's, else quickstart)",
    )
    group.add_argument("--config", metavar="FILE", help="YAML file overriding the profile")
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set train.epochs=3 (repeatable; VALUE is YAML)",
    )


def config_from_args(args: argparse.Namespace, **extra: Any) -> cfg.Config:
    """The validated config for a command: profile, then file, then --set, then ``extra``."""
    overrides = dict(cfg.parse_override(text) for text in args.overrides)
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return cfg.load_config(profile=args.profile, path=args.config, overrides=overrides)


def stage_parser(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str, examples: str
) -> argparse.ArgumentParser:
    """A stage command's parser, its description and examples printed as written."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """DATA_DIR and --backbone: what compare, tune and train take first."""
    parser.add_argument("data_dir", metavar="DATA_DIR", help="a TFRecord folder")
    parser.add_argument("--backbone", required=True, metavar="NAME", help="zoo backbone name")
