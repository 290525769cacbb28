"""``hemaflow run``: the whole pipeline on this machine through kfp.local."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import TextIO

from hemaflow.pipeline.commands._common import add_config_options, config_from_args
from hemaflow.pipeline.runners import RUNNERS, TaskRun

from hemaflow.reporting.runpage import duration


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the whole pipeline locally (kfp.local)",
        description="Run every stage, ingest to evaluate, through kfp.local: in this Python "
        "environment (subprocess) or in the project image (docker). Default: the quickstart "
        "profile on the embedded synthetic data.",
    )
    add_config_options(parser)
    parser.add_argument("--data", help="data source (folder, .npz, bloodmnist:SIZE, gs://...)")
    parser.add_argument("--runner", choices=RUNNERS, default="subprocess", help="(subprocess)")
    parser.add_argument(
        "--out", metavar="DIR", help="copy the ensemble (DIR/model), metrics.json, report.html here"
    )
    parser.add_argument(
        "--pipeline-root",
        metavar="DIR",
        help="KFP's artifact root (default: DIR/kfp or ./hemaflow-runs)",
    )
    parser.add_argument("--no-cache", action="store_true", help="rerun every task")
    parser.add_argument(
        "--time-limit",
        metavar="DURATION",
        help="finish the whole run within DURATION (90s, 55m, 1h30m or plain minutes): a plan "
        "after compare and tune picks members, epochs and views from this machine's measured "
        "speed; sets budget.minutes",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="preflight: the profile's own DAG shrunk to minutes on a CPU (32 px, a few "
        "batches per phase); weights it cannot load fall back to random initialisation",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemaflow.pipeline.runners import run_local

    from hemaflow import storage

    for root in (args.out, args.pipeline_root):
        if root:
            storage.check_output(root, "root", inputs=[args.data, args.config])
    from hemaflow.planning import deadline_overrides, parse_time_limit

    started = time.time()
    budget = {}
    if getattr(args, "time_limit", None) is not None:
        budget = deadline_overrides(parse_time_limit(args.time_limit), started)
    config = config_from_args(args, **{"data.source": args.data}, **budget)
    if config.budget.minutes and not config.budget.deadline:
        # A budget from the profile or config file: its clock starts now too.
        config = config.replace(deadline_overrides(config.budget.minutes, started))
    if getattr(args, "smoke", False):
        from hemaflow.config import smoke

        config = smoke(config)
    verbose = bool(getattr(args, "verbose", False))
    console = None if verbose else Console(sys.stdout)
    if console is not None:
        console.line(
            f"hemaflow run: {config.profile} profile, {args.runner} runner "
            "(-v shows every task's output)"
        )
    if getattr(args, "smoke", False):
        print(
            f"smoke preflight: {config.profile} DAG at {config.data.image_size} px, a few batches "
            f"per phase; model.weights {config.model.weights}: any backbone whose weights cannot "
            "be loaded is initialised randomly (its figures mean nothing)"
        )
    result = run_local(
        config,
        runner=args.runner,
        out=args.out,
        pipeline_root=args.pipeline_root,
        caching=not args.no_cache,
        observer=console,
        verbose=verbose,
    )
    shown = (
        "accuracy",
        "balanced_accuracy",
        "bmk_accuracy",
        "corrupted_accuracy",
        "independent_accuracy",
        "independent_severity5_accuracy",
        "independent_worst_family_accuracy",
        "ece",
    )
    numbers = ", ".join(
        f"{k} {result.metrics[k]:.3f}"
        for k in shown
        if isinstance(result.metrics.get(k), int | float)
    )
    if result.metrics.get("independent_worst_family"):
        numbers += f" (worst family: {result.metrics['independent_worst_family']})"
    print(f"hemaflow run finished ({config.profile}) in {duration(result.seconds)}: {numbers}")
    if config.budget.minutes:
        print(f"  time limit:    {duration(config.budget.minutes * 60)}")
    for name, note in (result.metrics.get("weights_fallback") or {}).items():
        print(f"  PREFLIGHT ONLY, random initialisation: {name}: {note}")
    if result.page is not None:
        print(f"  run page:      {result.page}")
    print(f"  model:         {result.copied.get('model', result.model)}")
    print(f"  report:        {result.copied.get('report', result.report)}")
    if "metrics" in result.copied:
        print(f"  metrics:       {result.copied['metrics']}")
    if result.logs is not None:
        print(f"  logs:          {result.logs}")
    print(f"  pipeline root: {result.pipeline_root}")
    if result.tensorboard is not None:
        print(f"  tensorboard:   tensorboard --logdir {result.tensorboard}")
    return 0


class Console:
    """What a quiet run shows: a line as each task starts and ends, a live line meanwhile.

    The live line (the running tasks' latest progress) is drawn only on a terminal; a log
    or a pipe gets the task lines alone.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self._running: dict[int, TaskRun] = {}
        self._drawn = False

    def line(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        self._draw()

    def task_started(self, task: TaskRun) -> None:
        self._running[id(task)] = task
        self.line(f"  start   {task.label}")

    def task_progress(self, task: TaskRun) -> None:
        self._clear()
        self._draw()

    def task_finished(self, task: TaskRun) -> None:
        self._running.pop(id(task), None)
        state = "cached" if task.state == "cached" else "done"
        time_taken = "" if state == "cached" else duration(task.seconds)
        self.line(f"  {state:<7} {task.label:<26} {time_taken:>10}  {task.headline}".rstrip())

    def task_failed(self, task: TaskRun, tail: list[str]) -> None:
        self._running.pop(id(task), None)
        self.line(f"  FAILED  {task.label:<26} {duration(task.seconds):>10}")
        for text in tail[-12:]:
            self.line(f"          | {text}")
        if task.log is not None:
            self.line(f"          log: {task.log}")

    def _draw(self) -> None:
        if not self.live or not self._running:
            self.stream.flush()
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        parts = [f"{t.label}: {t.progress or 'running'}" for t in self._running.values()]
        self.stream.write(("  ... " + " | ".join(parts))[:width])
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False
