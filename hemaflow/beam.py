"""Beam pipeline options for hemaflow's Beam work (balance-and-augment, batch inference).

Beam 2.77 resolves ``DirectRunner`` to its ``SwitchingDirectRunner``, which first tries the
Prism runner: a Go binary that it downloads from GitHub releases at run time. Only when that
fails does it run the pipeline in process, on the FnApiRunner for a batch pipeline (the
BundleBasedDirectRunner only for what that lacks: streaming, TestStream, real-time timers). On a
machine without internet access every pipeline waits on that download (it has no timeout of its
own) before the fallback; so ``DirectRunner`` here means the FnApiRunner directly, the same engine without the attempt
(``--direct_num_workers`` and ``--direct_running_mode`` apply to it as usual). Every other
runner name (``PrismRunner`` too, when asked for by name) goes to Beam unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DIRECT_RUNNER = "DirectRunner"
IN_PROCESS_RUNNER = "FnApiRunner"

# The names Beam's create_runner resolves to the SwitchingDirectRunner (matched case-blind, with
# or without a module path, and with or without the "Runner" suffix, as Beam matches them).
_SWITCHING = frozenset({"direct", "directrunner", "switchingdirectrunner"})


def resolve_runner(runner: str) -> str:
    """The runner Beam is given for ``runner``: the in-process one for the DirectRunner."""
    return IN_PROCESS_RUNNER if runner.rsplit(".", 1)[-1].lower() in _SWITCHING else runner


def pipeline_options(runner: str = DIRECT_RUNNER, runner_options: Sequence[str] = ()) -> Any:
    """Beam ``PipelineOptions`` for ``runner`` and its command-line style ``runner_options``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions([f"--runner={resolve_runner(runner)}", *runner_options])
