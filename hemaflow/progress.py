"""Progress reporting for long work, readable both in a terminal and in a pod's log.

Logging is one tree under ``hemaflow``: each stage logs as ``hemaflow.<stage>`` (e.g.
``hemaflow.train``) and each library module as ``hemaflow.<module>``, so one
:func:`setup_logging` call, or one logger's level, governs them all.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Wrap ``items`` in a progress bar (a live bar on a terminal, periodic lines in logs)."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    yield from tqdm(
        items,
        total=total,
        desc=desc,
        file=sys.stderr,
        mininterval=0.5 if interactive else 10.0,
        dynamic_ncols=interactive,
        leave=interactive,
        disable=None if interactive else False,
    )


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr with the logger's name, so stdout stays free for a command's output."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
