"""Options shared by ``hemaflow submit`` and ``hemaflow schedule``: which backend, where."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hemaflow.pipeline.commands._common import config_from_args
from hemaflow.pipeline.resources import TARGETS
from hemaflow.pipeline.submit import RequestError

from hemaflow.config import Config


def add_backend_options(parser: argparse.ArgumentParser, run_options: bool = True) -> None:
    parser.add_argument(
        "--backend", choices=TARGETS, default="kubeflow", help="where to send it (kubeflow)"
    )
    kfp = parser.add_argument_group("Kubeflow Pipelines")
    kfp.add_argument("--host", help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    kfp.add_argument("--namespace", default="kubeflow", help="profile namespace (kubeflow)")
    kfp.add_argument(
        "--token-env",
        default="KF_PIPELINES_TOKEN",
        metavar="VAR",
        help="environment variable holding a bearer token, if any (KF_PIPELINES_TOKEN)",
    )
    vertex = parser.add_argument_group("Vertex AI")
    vertex.add_argument("--project", help="Google Cloud project")
    vertex.add_argument("--region", help="Vertex AI region, e.g. europe-west4")
    if not run_options:
        return
    kfp.add_argument("--experiment", default="hemaflow", help="experiment name (hemaflow)")
    vertex.add_argument("--network", help="VPC network for the job (projects/N/global/networks/X)")
    run = parser.add_argument_group("run")
    run.add_argument(
        "--package",
        metavar="FILE",
        help="compiled pipeline (default: compile now); without --profile, --config, --set or "
        "--data the run uses the config it was compiled with",
    )
    run.add_argument("--data", help="data source (default: the profile's)")
    run.add_argument("--pipeline-root", help="gs:// root for artifacts (default: the profile's)")
    run.add_argument("--service-account", help="service account the tasks run as")
    run.add_argument("--no-cache", action="store_true", help="run every task, reuse nothing")


def run_config(args: argparse.Namespace) -> Config:
    """The config to send: the options', else a ``--package`` file's own compiled config."""
    from hemaflow.pipeline.compiler import compiled_config

    given = args.profile or args.config or args.overrides or args.data
    if args.package and not given:
        return compiled_config(args.package)
    return config_from_args(args, **{"data.source": args.data})


def connection(args: argparse.Namespace) -> dict[str, Any]:
    """The backend's connection keyword arguments, checked for completeness."""
    if args.backend == "kubeflow":
        if not args.host:
            raise RequestError("--host is required for --backend kubeflow")
        return {
            "host": args.host,
            "namespace": args.namespace,
            "existing_token": os.environ.get(args.token_env) or None,
        }
    missing = [f"--{n}" for n in ("project", "region") if not getattr(args, n)]
    if missing:
        raise RequestError(f"{' and '.join(missing)} required for --backend vertex")
    return {"project": args.project, "region": args.region}


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """Connection plus the per-run options the backend understands."""
    options = connection(args)
    options["pipeline_root"] = args.pipeline_root
    options["service_account"] = args.service_account
    if args.backend == "kubeflow":
        options["experiment"] = args.experiment
    else:
        options["network"] = args.network
    return options
