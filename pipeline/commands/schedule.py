"""``hemaflow schedule create|list|delete``: recurring retraining runs."""

from __future__ import annotations

import argparse

from hemaflow.pipeline.commands._backend import (
    add_backend_options,
    connection,
    run_config,
    run_options,
)
from hemaflow.pipeline.commands._common import add_config_options
from hemaflow.pipeline.submit import RequestError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="create, list or delete recurring runs (Kubeflow or Vertex AI)",
        description="Recurring retraining. Cron takes 5 fields (minute hour day month "
        "weekday) or 6 with seconds first; it is converted to each backend's dialect.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="schedule a recurring run")
    add_config_options(create)
    add_backend_options(create)
    create.add_argument("--cron", required=True, help="e.g. '0 3 * * 1' (Mondays 03:00)")
    create.add_argument("--name", default="hemaflow-retrain", help="schedule name")
    create.add_argument("--max-concurrency", type=int, default=1, help="runs at once (1)")
    create.set_defaults(func=run_create)
    listing = actions.add_parser("list", help="list recurring runs")
    add_backend_options(listing, run_options=False)
    listing.set_defaults(func=run_list)
    delete = actions.add_parser("delete", help="delete a recurring run")
    add_backend_options(delete, run_options=False)
    delete.add_argument("schedule_id", help="id (Kubeflow) or resource name (Vertex)")
    delete.set_defaults(func=run_delete)


def run_create(args: argparse.Namespace) -> int:
    from hemaflow.pipeline import schedule

    if args.max_concurrency < 1:
        raise RequestError("--max-concurrency: must be at least 1")
    config = run_config(args)
    made = schedule.create(
        config,
        args.backend,
        args.cron,
        args.name,
        package=args.package,
        caching=not args.no_cache,
        max_concurrency=args.max_concurrency,
        **run_options(args),
    )
    print(f"scheduled on {made.backend}: {made.name} [{made.cron}] id {made.id}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from hemaflow.pipeline import schedule

    conn = connection(args)
    found = (
        schedule.list_vertex(**conn) if args.backend == "vertex" else schedule.list_kubeflow(**conn)
    )
    for item in found:
        print(f"{item.id}\t{item.name}\t{item.cron}")
    if not found:
        print("no schedules")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    from hemaflow.pipeline import schedule

    conn = connection(args)
    if args.backend == "vertex":
        schedule.delete_vertex(args.schedule_id, **conn)
    else:
        schedule.delete_kubeflow(args.schedule_id, **conn)
    print(f"deleted {args.schedule_id}")
    return 0
