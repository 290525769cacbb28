"""The one error family of hemaflow: problems a user can fix, each said in one line.

Everything hemaflow raises on purpose (bad input, an impossible configuration, a missing or
incomplete artifact) derives from :class:`HemaflowError` and names the culprit (file, index,
key). The command line prints such an error as one line without a traceback; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class HemaflowError(Exception):
    """A problem with what hemaflow was given, not with hemaflow; its message names the culprit."""


class StageError(HemaflowError, ValueError):
    """A stage cannot do its work on the inputs it was handed."""
