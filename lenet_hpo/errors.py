"""The errors the library raises, and the warnings it silences.  Each message says what
went wrong and what to do.

The command line maps them to exit statuses: a `ConfigError` (a bad value given by the
user: a config field, a named config, a command-line value the parser could not check)
exits 2, like argparse's own errors; every other `LenetHpoError` exits 1.  Anything
else is a bug and is shown with its traceback.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class LenetHpoError(Exception):
    """Base class: the CLI prints these as `error: <message>`."""

    exit_status = 1


class ConfigError(LenetHpoError, ValueError):
    """A value given by the user is invalid (a ValueError too, for code that expects one)."""

    exit_status = 2


class DataError(LenetHpoError):
    """A dataset could not be obtained, verified or decoded."""


class ChecksumError(DataError):
    """A dataset file does not match its pinned SHA-256."""


class StudyError(LenetHpoError):
    """A study is missing, malformed or has nothing to offer."""


class StorageError(LenetHpoError):
    """The study storage cannot be reached or used."""


class CheckpointError(LenetHpoError):
    """A checkpoint is missing, unsafe or does not fit."""


class ImageError(LenetHpoError):
    """An image to classify is missing, unreadable or blank."""


@contextmanager
def experimental_used_knowingly() -> Iterator[None]:
    """Optuna features marked experimental that the project relies on (heartbeats, TPE's
    group and constant liar, metric names, stale-trial retries): no warning in every log."""
    from optuna.exceptions import ExperimentalWarning  # here, so importing errors stays cheap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def printable(text: object) -> str:
    """`text` as it may be shown on a line of its own: a name holding a newline or another
    control character is shown escaped (as Python writes it), so it cannot forge output lines."""
    s = str(text)
    return s if s.isprintable() else ascii(s)[1:-1]
