"""Run the whole DAG on this machine through kfp.local, and hand its results to the user.

``subprocess`` runs every task with ``kfp.local.SubprocessRunner(use_venv=False)`` in the
current Python environment (where hemaflow is installed); ``docker`` runs each task in the
project image with ``kfp.local.DockerRunner``, a local data folder bind-mounted read-only at
the same path. The run gets the resolved config as its one parameter, as a submitted run
does (:func:`hemaflow.pipeline.dag.parameters`). KFP keeps its own pipeline root; with
``out`` the exported ensemble, its metrics and the HTML report are also copied to
``out/model``, ``out/metrics.json`` and ``out/report.html``.

Each task's output (KFP's executor log, the stage's own lines, TensorFlow's start-up lines)
goes to ``RUN/logs/<task>.log`` (``RUN`` is ``out``, else the pipeline root), one file per
task and per fan-out iteration (``compare-resnet_mini.log``); see :class:`TaskLogs`. After
the run, :func:`write_run_page` writes ``RUN/index.html``: every task with its state, time,
headline figure, log and report (copied to ``RUN/reports/``), plus the model card, and links
each compare/tune/train ``tensorboard/`` folder under ``RUN/tensorboard/``.
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import inspect
import io
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO, get_args

from hemaflow import storage
from hemaflow.config import Config
from hemaflow.errors import HemaflowError


class RunError(HemaflowError, RuntimeError):
    """The local run cannot start: unknown runner, image missing, Docker not reachable."""


Runner = Literal["subprocess", "docker"]
RUNNERS: tuple[str, ...] = get_args(Runner)


@dataclass
class LocalRun:
    """Where a finished local run left its results."""

    pipeline_root: Path
    model: Path
    evaluation: Path
    report: Path
    metrics: dict[str, Any]
    out: Path | None = None
    copied: dict[str, Path] = field(default_factory=dict)
    tasks: list[TaskRun] = field(default_factory=list)
    logs: Path | None = None
    page: Path | None = None
    tensorboard: Path | None = None
    seconds: float = 0.0


def local_source(source: str) -> Path | None:
    """The local folder or file a source names; None for ``default``, gs:// and ``name:size``."""
    if source == "default" or re.match(r"^[A-Za-z][\w+.-]*:", source):
        return None
    return Path(source).expanduser().resolve()


def resolve_source(config: Config) -> Config:
    """Make a local data path absolute (tasks may run in another folder or a container)."""
    path = local_source(config.data.source)
    if path is None:
        return config
    if not path.exists():
        raise FileNotFoundError(f"{config.data.source}: data source not found")
    return config.replace({"data.source": str(path)})


def make_runner(kind: Runner, config: Config) -> Any:
    from kfp import local

    if kind == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    if kind != "docker":
        raise RunError(f"runner: {kind!r} is not one of {', '.join(RUNNERS)}")
    import docker

    try:
        docker.from_env().images.get(config.pipeline.image)
    except docker.errors.ImageNotFound as exc:
        raise RunError(
            f"image {config.pipeline.image!r} not found locally; build it "
            "(docker/README) or set --set pipeline.image=NAME"
        ) from exc
    except docker.errors.DockerException as exc:
        raise RunError(f"Docker engine not reachable ({exc}); is dockerd running?") from exc
    mounts = []
    path = local_source(config.data.source)
    if path is not None:
        mounts.append(
            docker.types.Mount(target=str(path), source=str(path), type="bind", read_only=True)
        )
    # Run as the invoking user, so tasks can write into the bind-mounted pipeline root and
    # the results belong to whoever started the run.
    return local.DockerRunner(mounts=mounts, user=f"{os.getuid()}:{os.getgid()}")


# --------------------------------------------------------------------------- task logs


@dataclass
class TaskRun:
    """One task of a local run, as kfp.local reported it."""

    name: str
    state: str = "running"
    backbone: str | None = None
    started: float | None = None
    ended: float | None = None
    log: Path | None = None
    attempts: int = 1
    #: Output name -> parameter value, or the local path of an artifact.
    outputs: dict[str, Any] = field(default_factory=dict)
    #: Output name -> artifact class name (``HTML``, ``Model``, ...).
    kinds: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    progress: str = ""

    @property
    def key(self) -> str:
        """Unique within a run and safe as a file name: ``compare-resnet_mini``."""
        label = f"{self.name}-{self.backbone}" if self.backbone else self.name
        return re.sub(r"[^\w.-]+", "_", label)

    @property
    def label(self) -> str:
        return f"{self.name} {self.backbone}" if self.backbone else self.name

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return max(0.0, self.ended - self.started)

    @property
    def headline(self) -> str:
        return headline(self.name, self.outputs, self.metrics)


class RunObserver(Protocol):
    """What a front end (the ``hemaflow run`` command) is told while the run goes on."""

    def task_started(self, task: TaskRun) -> None: ...

    def task_progress(self, task: TaskRun) -> None: ...

    def task_finished(self, task: TaskRun) -> None: ...

    def task_failed(self, task: TaskRun, tail: list[str]) -> None: ...


def headline(name: str, outputs: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The one figure that says how a task went, for its line and the run page."""

    def num(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, int | float) else None

    if name == "configure" and isinstance(outputs.get("backbones"), list):
        return "backbones " + ", ".join(map(str, outputs["backbones"]))
    if name == "select-top-k" and isinstance(outputs.get("Output"), list):
        return "top " + ", ".join(map(str, outputs["Output"]))
    for key in ("accuracy", "val_accuracy", "best_val_accuracy"):
        if num(key) is not None:
            return f"{key} {num(key):.3f}"
    if num("train_images") is not None:
        split = [int(num(k) or 0) for k in ("train_images", "val_images", "test_images")]
        return f"{split[0]}/{split[1]}/{split[2]} train/val/test images"
    if num("images_per_s") is not None:
        return f"{num('images_per_s'):.0f} images/s"
    return ""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r"^Executing task '(?P<task>[^']+)'")
_FINISHED = re.compile(r"^Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")
_OUTPUTS = re.compile(r"^Task '(?P<task>[^']+)' (?:outputs:|has no outputs)")
_CACHED = re.compile(r"^Task (?P<task>\S+) cache hit \(key=(?P<key>[0-9a-f]+)\)")
_RETRY = re.compile(r"^Task (?P<task>\S+) failed \(attempt \d+/\d+\)")
_OUTPUT_LINE = re.compile(r"^ {4}(?P<key>\w+): (?P<rest>.*)$")
_ARTIFACT = re.compile(r"^(?P<kind>\w+)\( name='")
_URI = re.compile(r"^\s+uri='(?P<uri>.*)',$")
_BACKBONE = re.compile(r'^\s*"backbone":\s*"(?P<name>[^"]+)"')
_RULE = re.compile(r"^\s*-{20,}\s*$")
_EXECUTOR_PREFIX = re.compile(r"^\s*(?:\[KFP Executor [^\]]*\]:\s*)?")
_PROGRESS = re.compile(r"^(?:[\w .-]+: \d+(?:/\d+)? \w+ \[|epoch \d+)")


def parse_outputs(message: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Parameter values and artifact paths from kfp.local's "Task 'x' outputs:" record."""
    values: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    current = None
    for line in message.splitlines()[1:]:
        uri = _URI.match(line)
        if uri and current is not None:
            values[current] = uri.group("uri")
            continue
        match = _OUTPUT_LINE.match(line)
        if not match:
            continue
        key, rest = match.group("key"), match.group("rest")
        artifact = _ARTIFACT.match(rest)
        if artifact:
            current, kinds[key] = key, artifact.group("kind")
            continue
        current = None
        try:
            values[key] = ast.literal_eval(rest)
        except (ValueError, SyntaxError):
            values[key] = rest
    return values, kinds


def cached_outputs(cache_root: Path, key_prefix: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A cache hit's outputs, from kfp.local's cache entry (``<root>/.kfp_cache/<key>.json``).

    kfp.local logs only the key's first 12 characters; an entry that cannot be found or read
    leaves the task without outputs on the run page, nothing worse.
    """
    values: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    entries = sorted(cache_root.glob(f"{key_prefix}*.json")) if key_prefix else []
    if len(entries) != 1:
        return values, kinds
    try:
        stored = json.loads(entries[0].read_text())
    except (OSError, ValueError):
        return values, kinds
    for key, value in stored.items():
        if isinstance(value, dict) and value.get("__kfp_artifact__"):
            values[key] = value.get("uri", "")
            kinds[key] = str(value.get("schema_title", "")).rsplit(".", 1)[-1]
        else:
            values[key] = value
    return values, kinds


def _takes_backbone(name: str) -> bool:
    from hemaflow.pipeline.tasks import WRAPPERS

    fn = WRAPPERS.get(name)
    return fn is not None and "backbone" in inspect.signature(fn).parameters


@dataclass
class _Active:
    """A task running on one thread: where its lines go and the last of them."""

    task: TaskRun
    file: TextIO | None = None
    pending: list[str] = field(default_factory=list)
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=15))
    closing: bool = False


class TaskLogs:
    """Sort kfp.local's output into one log file per task, and tell an observer how tasks go.

    kfp.local (2.17) runs each task inside ``logging_utils.local_logger_context()`` and prints
    the task's output line by line with ``print()`` (the subprocess runner reads the child's
    pipe, the Docker runner the container's log stream) to ``sys.stdout``; it announces each
    task with root-logger records ("Executing task 'x'", "Task 'x' finished with status ...",
    "Task 'x' outputs: ...", "Task x cache hit"). Iterations of a ParallelFor run at the same
    time on up to two worker threads, each with its own records and prints. So the hooks are
    public ones: ``sys.stdout``/``sys.stderr`` replaced by streams that hand each line to the
    task of the thread that wrote it, and a ``logging.Filter`` on the root logger (which
    kfp.local's logger context leaves alone: it swaps handlers and the level, not filters)
    that reads the records to learn which task each thread runs. Nothing of kfp is patched;
    if its messages change, lines land in ``run.log`` and the run itself is unaffected.
    A fan-out task's log is named after its backbone, read from its executor input.
    """

    def __init__(
        self,
        folder: Path,
        cache_root: Path,
        observer: RunObserver | None = None,
        echo: bool = False,
    ) -> None:
        self.folder = folder
        self.cache_root = cache_root
        self.observer = observer
        self.echo = echo
        self.tasks: list[TaskRun] = []
        self._active: dict[int, _Active] = {}
        self._partial: dict[int, str] = {}
        self._lock = threading.RLock()
        self._run_log: TextIO | None = None
        self._used: set[str] = set()

    # ----------------------------------------------------------------- hooks

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Route stdout, stderr and root-logger records through these logs for a while."""
        from hemaflow.progress import child_environment

        self.folder.mkdir(parents=True, exist_ok=True)
        self._run_log = open(self.folder / "run.log", "w", encoding="utf-8")  # noqa: SIM115
        root = logging.getLogger()
        saved = (sys.stdout, sys.stderr, root.handlers[:], builtins.print)
        sys.stdout = _Stream(self, saved[0])
        sys.stderr = _Stream(self, saved[1])
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.handlers = [handler]
        watcher = _RecordWatcher(self)
        root.addFilter(watcher)
        try:
            with child_environment():
                yield
        finally:
            root.removeFilter(watcher)
            root.handlers = saved[2]
            sys.stdout, sys.stderr = saved[0], saved[1]
            # kfp.local's indented_print swaps builtins.print per task; two tasks at once can
            # leave it indented after the run.
            builtins.print = saved[3]
            self.close()

    def close(self) -> None:
        with self._lock:
            for ident, text in list(self._partial.items()):
                if text:
                    self._line(ident, text)
            self._partial.clear()
            for ident in list(self._active):
                self._detach(ident)
            if self._run_log is not None:
                self._run_log.close()
                self._run_log = None

    def failed(self) -> list[TaskRun]:
        return [t for t in self.tasks if t.state == "failed"]

    # ----------------------------------------------------------------- lines

    def write(self, text: str, real: TextIO) -> None:
        with self._lock:
            if self.echo:
                real.write(text)
                real.flush()
            ident = threading.get_ident()
            buffered = self._partial.get(ident, "") + text
            *lines, rest = buffered.split("\n")
            self._partial[ident] = rest
            for line in lines:
                self._line(ident, line)

    def _line(self, ident: int, line: str) -> None:
        clean = _ANSI.sub("", line).rstrip("\r")
        active = self._active.get(ident)
        if active is None:
            if self._run_log is not None:
                self._run_log.write(clean + "\n")
                self._run_log.flush()
            return
        task = active.task
        if active.file is None:
            active.pending.append(clean)
            found = _BACKBONE.match(clean)
            if found and task.backbone is None:
                task.backbone = found.group("name")
                self._open(active)
        else:
            active.file.write(clean + "\n")
            active.file.flush()
        if active.closing and _RULE.match(clean):
            self._detach(ident)
            return
        text = _EXECUTOR_PREFIX.sub("", clean).strip()
        if text:
            active.tail.append(text)
            if _PROGRESS.match(text) and task.state == "running":
                task.progress = text
                if self.observer is not None:
                    self.observer.task_progress(task)

    def _open(self, active: _Active) -> None:
        """Open the task's log once its name is known, and announce the task."""
        key, n = active.task.key, 1
        while (key if n == 1 else f"{key}-{n}") in self._used and active.task.attempts == 1:
            n += 1
        name = key if n == 1 else f"{key}-{n}"
        self._used.add(name)
        active.task.log = self.folder / f"{name}.log"
        # A retry appends to its first attempt's log; a new run starts a fresh one.
        mode = "a" if active.task.attempts > 1 else "w"
        active.file = open(active.task.log, mode, encoding="utf-8")  # noqa: SIM115
        for line in active.pending:
            active.file.write(line + "\n")
        active.file.flush()
        active.pending.clear()
        if self.observer is not None:
            self.observer.task_started(active.task)

    def _detach(self, ident: int) -> None:
        active = self._active.pop(ident, None)
        if active is None:
            return
        if active.file is None:
            self._open(active)
        if active.file is not None:
            active.file.close()

    # ----------------------------------------------------------------- records

    def record(self, record: logging.LogRecord) -> None:
        """Learn from one of kfp.local's records which task a thread runs and how it ends."""
        try:
            message = _ANSI.sub("", record.getMessage())
        except Exception:  # a record that cannot format is not ours to judge
            return
        with self._lock:
            ident = record.thread or threading.get_ident()
            if m := _EXECUTING.match(message):
                self._start(ident, m.group("task"), record.created)
            elif m := _FINISHED.match(message):
                self._finish(ident, m.group("status"), record.created)
            elif _OUTPUTS.match(message):
                active = self._active.get(ident)
                if active is not None:
                    self._collect(active, message)
            elif m := _CACHED.match(message):
                self._cached(m.group("task"), m.group("key"), record.created)
            elif m := _RETRY.match(message):
                retried = [t for t in self.tasks if t.name == m.group("task")]
                if retried:
                    retried[-1].state = "retrying"

    def _start(self, ident: int, name: str, created: float) -> None:
        if ident in self._active:
            self._detach(ident)
        again = [t for t in self.tasks if t.name == name and t.state == "retrying"]
        if again:
            task = again[-1]
            task.state, task.attempts = "running", task.attempts + 1
        else:
            task = TaskRun(name=name, started=created)
            self.tasks.append(task)
        active = _Active(task)
        self._active[ident] = active
        if not _takes_backbone(name) or task.backbone is not None:
            self._open(active)

    def _finish(self, ident: int, status: str, created: float) -> None:
        active = self._active.get(ident)
        if active is None:
            return
        task = active.task
        task.ended = created
        if status == "SUCCESS":
            task.state = "succeeded"
            return  # announced with its outputs, in the record that follows
        task.state = "failed"
        active.closing = True
        if active.file is None:
            self._open(active)
        if self.observer is not None:
            self.observer.task_failed(task, list(active.tail))

    def _collect(self, active: _Active, message: str) -> None:
        task = active.task
        task.outputs, task.kinds = parse_outputs(message)
        self._read_metrics(task)
        if active.file is None:
            self._open(active)
        active.closing = True
        if self.observer is not None:
            self.observer.task_finished(task)

    def _cached(self, name: str, key: str, created: float) -> None:
        task = TaskRun(name=name, state="cached", started=created, ended=created)
        task.outputs, task.kinds = cached_outputs(self.cache_root, key)
        self._read_metrics(task)
        self.tasks.append(task)
        if self.observer is not None:
            self.observer.task_finished(task)

    def _read_metrics(self, task: TaskRun) -> None:
        """The task's Metrics artifact (its file holds the scalars) and a missing backbone."""
        for key, kind in task.kinds.items():
            path = Path(str(task.outputs.get(key, "")))
            if kind == "Metrics" and path.is_file():
                with contextlib.suppress(OSError, ValueError):
                    task.metrics = json.loads(path.read_text())
            if task.backbone is None and (path / "metrics.json").is_file():
                with contextlib.suppress(OSError, ValueError):
                    task.backbone = json.loads((path / "metrics.json").read_text()).get("backbone")
        output = task.outputs.get("Output")
        if task.backbone is None and isinstance(output, dict):
            task.backbone = output.get("backbone")
        if task.backbone is not None and not _takes_backbone(task.name):
            task.backbone = None


class _Stream(io.TextIOBase):
    """A stand-in for sys.stdout or sys.stderr that hands what is written to :class:`TaskLogs`."""

    def __init__(self, logs: TaskLogs, real: TextIO) -> None:
        self.logs, self.real = logs, real

    def write(self, text: str) -> int:
        self.logs.write(text, self.real)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")


class _RecordWatcher(logging.Filter):
    """Reads the root logger's records for :class:`TaskLogs`; lets every record through."""

    def __init__(self, logs: TaskLogs) -> None:
        super().__init__()
        self.logs = logs

    def filter(self, record: logging.LogRecord) -> bool:
        self.logs.record(record)
        return True


# --------------------------------------------------------------------------- run page

#: The DAG's tasks in order (fan-out iterations follow their task in backbone order).
DAG_ORDER = (
    "configure",
    "ingest",
    "balance-and-augment",
    "compare",
    "select-top-k",
    "tune",
    "plan",
    "plan-config",
    "train",
    "train-member",
    "ensemble",
    "evaluate",
)
TENSORBOARD_TASKS = ("compare", "tune", "train", "train-member")


def ordered(tasks: list[TaskRun], backbones: list[str]) -> list[TaskRun]:
    """Tasks in DAG order, the iterations of a fan-out in the config's backbone order."""

    def rank(task: TaskRun) -> tuple[int, int]:
        step = DAG_ORDER.index(task.name) if task.name in DAG_ORDER else len(DAG_ORDER)
        b = task.backbone
        return step, backbones.index(b) if b in backbones else len(backbones)

    return sorted(tasks, key=rank)


def task_report(task: TaskRun) -> Path | None:
    """The HTML report a task wrote: ``report.html`` in an output folder, else an HTML file."""
    paths = [Path(str(task.outputs[k])) for k in task.kinds if task.outputs.get(k)]
    for path in paths:
        if (path / "report.html").is_file():
            return path / "report.html"
    for key, kind in task.kinds.items():
        path = Path(str(task.outputs.get(key, "")))
        if kind == "HTML" and path.is_file():
            return path
    return None


def write_run_page(
    run_dir: Path,
    tasks: list[TaskRun],
    config: Config,
    metrics: dict[str, Any] | None,
    seconds: float,
    state: str,
    evaluation: Path | None = None,
) -> tuple[Path, Path]:
    """Copy every report next to the run page, link TensorBoard logs, write ``index.html``.

    Returns the page and the TensorBoard folder.
    """
    from hemaflow.reporting import runpage

    tasks = ordered(tasks, list(config.model.backbones))
    reports = run_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    boards = run_dir / "tensorboard"
    boards.mkdir(parents=True, exist_ok=True)
    shown: list[runpage.PageTask] = []
    for task in tasks:
        report_href = None
        source = task_report(task)
        if source is not None:
            target = reports / f"{task.key}.html"
            storage.write_bytes_atomic(target, source.read_bytes())
            report_href = f"reports/{target.name}"
        if task.name in TENSORBOARD_TASKS:
            link_tensorboard(task, boards)
        log_href = None
        if task.log is not None and task.log.is_file():
            log_href = os.path.relpath(task.log, run_dir)
        shown.append(
            runpage.PageTask(
                name=task.name,
                state=task.state,
                backbone=task.backbone,
                seconds=task.seconds,
                headline=task.headline,
                report=report_href,
                log=log_href,
            )
        )
    links: list[tuple[str, str]] = []
    if evaluation is not None and (evaluation / "model_card.md").is_file():
        card = (evaluation / "model_card.md").read_text()
        storage.write_text_atomic(run_dir / "model_card.md", card)
        storage.write_text_atomic(
            run_dir / "model_card.html", runpage.markdown_page(card, "Model card")
        )
        links += [("model card", "model_card.html"), ("model card (Markdown)", "model_card.md")]
    for label, name in (("evaluation report", "report.html"), ("metrics.json", "metrics.json")):
        if (run_dir / name).is_file():
            links.append((label, name))
    if (run_dir / "logs" / "run.log").is_file():
        links.append(("orchestration log (kfp.local)", "logs/run.log"))
    notes = [f"TensorBoard: tensorboard --logdir {boards}"]
    if (run_dir / "model").is_dir():
        notes.insert(0, f"Model: {run_dir / 'model'} (hemaflow predict / hemaflow evaluate)")
    plan = plan_summary(tasks, seconds)
    if plan is not None:
        storage.write_text_atomic(run_dir / "plan.json", json.dumps(plan, indent=2))
        links.append(("plan.json (predicted and actual seconds)", "plan.json"))
    page = runpage.RunPage(
        title=f"hemaflow run: {config.profile}",
        plan=plan,
        state=state,
        tasks=shown,
        metrics=metrics or {},
        links=links,
        seconds=seconds,
        synthetic=config.data.source == "default",
        notes=notes,
    )
    index = run_dir / "index.html"
    storage.write_text_atomic(index, runpage.render(page))
    return index, boards


def plan_summary(tasks: list[TaskRun], seconds: float) -> dict[str, Any] | None:
    """A time-limited run's plan beside what happened: each member's predicted and actual
    epochs and seconds, and the run's time against its limit; None without a plan."""
    found = [t for t in tasks if t.name == "plan" and t.outputs.get("schedule")]
    path = Path(str(found[-1].outputs["schedule"])) / "plan.json" if found else None
    if path is None or not path.is_file():
        return None
    plan = json.loads(path.read_text())
    trained: dict[tuple[str, int], tuple[TaskRun, dict[str, Any]]] = {}
    for task in tasks:
        record = Path(str(task.outputs.get("model", ""))) / "metrics.json"
        if task.name == "train-member" and record.is_file():
            metrics = json.loads(record.read_text())
            trained[(str(task.backbone), int(metrics.get("seed", -1)))] = (task, metrics)
    rows = []
    for member in plan["members"]:
        task, metrics = trained.get((member["backbone"], int(member["seed"])), (None, {}))
        rows.append(
            {
                **{k: member[k] for k in ("index", "backbone", "seed", "epochs")},
                "predicted_seconds": member["predicted_seconds"],
                "actual_epochs": metrics.get("epochs_run"),
                "completed_epochs": metrics.get("completed_epochs"),
                "actual_seconds": task.seconds if task is not None else None,
                "stopped_by_deadline": metrics.get("stopped_by_deadline"),
            }
        )
    return {
        "minutes": plan["minutes"],
        "views": plan["views"],
        "predicted": plan["predicted"],
        "inputs": plan["inputs"],
        "members": rows,
        "run_seconds": seconds,
        "within_limit": seconds <= plan["minutes"] * 60,
    }


def link_tensorboard(task: TaskRun, boards: Path) -> Path | None:
    """``boards/<task>`` -> the task's ``tensorboard/`` folder (a symlink, else a copy)."""
    for key in task.kinds:
        source = Path(str(task.outputs.get(key, ""))) / "tensorboard"
        if not source.is_dir():
            continue
        target = boards / task.key
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        try:
            target.symlink_to(source.resolve(), target_is_directory=True)
        except OSError:
            shutil.copytree(source, target)
        return target
    return None


def run_local(
    config: Config,
    runner: Runner = "subprocess",
    out: str | Path | None = None,
    pipeline_root: str | Path | None = None,
    caching: bool = True,
    observer: RunObserver | None = None,
    verbose: bool = False,
) -> LocalRun:
    """Run the whole pipeline with kfp.local and return (and optionally copy) its results.

    Every task's output goes to its own log under ``RUN/logs`` (also to the terminal with
    ``verbose``), and ``RUN/index.html`` is written whether the run succeeds or not.
    """
    from hemaflow.pipeline import dag, steps
    from kfp import local

    config = resolve_source(config)
    steps.validate_request(config)
    out_path = Path(out).expanduser().resolve() if out else None
    root = Path(pipeline_root or (out_path / "kfp" if out_path else Path.cwd() / "hemaflow-runs"))
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    run_dir = out_path or root
    local.init(
        runner=make_runner(runner, config),
        pipeline_root=str(root),
        enable_caching=caching and config.pipeline.caching,
        raise_on_error=True,
    )
    pipeline = dag.build_pipeline(config, target="kubeflow", local=True)
    logs = TaskLogs(run_dir / "logs", root / ".kfp_cache", observer=observer, echo=verbose)
    started = time.monotonic()
    try:
        with logs.capture(), warnings.catch_warnings():
            # The project image has no "python" in its name; it is a Python image all the same.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            task = pipeline(**dag.parameters(config))
    except Exception as exc:
        write_run_page(run_dir, logs.tasks, config, None, time.monotonic() - started, "failed")
        failed = logs.failed()
        if failed and isinstance(exc, RuntimeError):
            where = f"; its log: {failed[0].log}" if failed[0].log else ""
            raise RunError(f"task {failed[0].label} failed{where}") from exc
        raise
    outputs = task.outputs
    evaluation = Path(outputs["evaluation"].path)
    result = LocalRun(
        pipeline_root=root,
        model=Path(outputs["model"].path),
        evaluation=evaluation,
        report=Path(outputs["report"].path),
        metrics=json.loads((evaluation / "metrics.json").read_text()),
        tasks=logs.tasks,
        logs=logs.folder,
        seconds=time.monotonic() - started,
    )
    if out_path is not None:
        result.out = out_path
        result.copied = publish(result, out_path)
    result.page, result.tensorboard = write_run_page(
        run_dir, logs.tasks, config, result.metrics, result.seconds, "succeeded", evaluation
    )
    return result


def publish(run: LocalRun, out: Path) -> dict[str, Path]:
    """Copy the ensemble Model folder, metrics.json and report.html into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with storage.artifact_dir(out / "model") as staging:
        shutil.copytree(run.model, staging, dirs_exist_ok=True)
        (staging / storage.COMPLETE_MARKER).unlink(missing_ok=True)
    storage.write_bytes_atomic(out / "metrics.json", (run.evaluation / "metrics.json").read_bytes())
    storage.write_bytes_atomic(out / "report.html", run.report.read_bytes())
    return {
        "model": out / "model",
        "metrics": out / "metrics.json",
        "report": out / "report.html",
    }
