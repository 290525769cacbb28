"""Progress reporting for long work, readable both in a terminal and in a pod's log."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("hemaflow")


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
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
