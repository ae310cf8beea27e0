"""Errors the library raises.  Each message says what went wrong and what to do."""


class LenetHpoError(Exception):
    """Base class: the CLI prints these as `error: <message>` and exits 1."""


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
