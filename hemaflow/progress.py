"""Progress reporting for long work, readable both in a terminal and in a pod's log.

Logging is one tree under ``hemaflow``: each stage logs as ``hemaflow.<stage>`` (e.g.
``hemaflow.train``) and each library module as ``hemaflow.<module>``, so one
:func:`setup_logging` call, or one logger's level, governs them all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

# A log line carries no bar: counts, elapsed<remaining, rate and what the caller adds.
_LINE = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LINE_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"


class Progress:
    """``total`` units of work: a live tqdm bar on a terminal, else plain lines.

    A pod's or CI's log keeps every carriage return a bar writes, so there each report is one
    whole line: at most one per ``log_interval`` seconds, and one when the work is done.
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        unit: str = "it",
        stream: TextIO | None = None,
        log_interval: float = 10.0,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.unit = total, desc, unit
        self.n, self.postfix = 0, ""
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = self._last = time.monotonic()
        self._interval = 0.5 if self.interactive else log_interval
        self._shown = -1
        self._bar = None
        if self.interactive:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                file=self.stream,
                mininterval=self._interval,
                dynamic_ncols=True,
            )

    def update_to(self, n: int, postfix: str | None = None) -> None:
        """Set the count to ``n`` (and the text after the figures to ``postfix``)."""
        if postfix is not None:
            self.postfix = postfix
        if self._bar is not None:
            self._bar.set_postfix_str(self.postfix, refresh=False)
            self._bar.update(n - self._bar.n)
        self.n = n
        if self._bar is None and time.monotonic() - self._last >= self._interval:
            self._line()

    def close(self, postfix: str | None = None) -> None:
        """Show the final state once: the bar stays on screen, a log gets its last line."""
        if postfix is not None:
            self.postfix = postfix
        if self._bar is not None:
            self._bar.set_postfix_str(self.postfix, refresh=False)
            self._bar.close()
        elif self._shown != self.n or postfix is not None:
            self._line()
        self._shown = self.n

    @staticmethod
    def format_interval(seconds: float) -> str:
        """``seconds`` as [H:]MM:SS, the way the figures of a line show time."""
        from tqdm import tqdm

        return tqdm.format_interval(seconds)

    def _line(self) -> None:
        from tqdm import tqdm

        text = tqdm.format_meter(
            self.n,
            self.total,
            time.monotonic() - self._start,
            prefix=self.desc,
            unit=self.unit,
            postfix=self.postfix or None,
            bar_format=_LINE if self.total else _LINE_NO_TOTAL,
        )
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last, self._shown = time.monotonic(), self.n


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Wrap ``items`` in a :class:`Progress` (a live bar on a terminal, periodic lines in logs)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = Progress(total, desc)
    try:
        for n, item in enumerate(items, 1):
            yield item
            bar.update_to(n)
    finally:
        bar.close()


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr with the logger's name, so stdout stays free for a command's output.

    Without ``verbose``, TensorFlow's start-up lines are hidden too (:func:`quiet_tensorflow`).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not verbose:
        quiet_tensorflow()


#: What hides TensorFlow's C++ INFO and WARNING lines (CUDA probing, oneDNN, CPU features).
#: Read once, when TensorFlow loads, so it is set before any stage imports it.
QUIET_TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
_quieted: dict[str, str] = {}


def quiet_tensorflow() -> None:
    """Hide TensorFlow's start-up noise and absl's INFO/WARNING lines; keep hemaflow's own.

    A value the user set in the environment wins.
    """
    for key, value in QUIET_TF_ENV.items():
        if key not in os.environ:
            os.environ[key] = value
            _quieted[key] = value
    logging.getLogger("absl").setLevel(logging.ERROR)


@contextlib.contextmanager
def child_environment() -> Iterator[None]:
    """Undo :func:`quiet_tensorflow`'s environment for child processes started meanwhile.

    The local pipeline run sends each task's output to a log file, where TensorFlow's
    start-up lines belong; this process keeps the level it loaded TensorFlow with.
    """
    removed = {k: os.environ.pop(k) for k, v in _quieted.items() if os.environ.get(k) == v}
    try:
        yield
    finally:
        for key, value in removed.items():
            os.environ.setdefault(key, value)
