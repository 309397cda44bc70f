"""Errors a user can act on.

Every user error (bad parameter, bad queue, unreadable or incomplete Level-1 product, image
outside every grid, ...) raises a subclass of :class:`L2psError` whose message names the file,
the key or band, and what was expected. The workflow turns an ``L2psError`` into a FAIL line
in the queue and exits 0 (a retry would fail the same way); any other exception is a crash.
"""
from __future__ import annotations


class L2psError(Exception):
    """Base class of all errors caused by the user's input or settings."""


class ParameterError(L2psError):
    """The parameter file is missing, malformed or has invalid values.

    ``problems`` holds every problem found (all are reported at once).
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class QueueError(L2psError):
    """The queue file cannot be read or has malformed lines."""


class Level1Error(L2psError):
    """A Level-1 product is not recognised, incomplete, corrupt or not acceptable (tier)."""


class GridError(L2psError):
    """A data cube or grid definition is invalid, or the image lies outside every grid."""


class OutputError(L2psError):
    """A product could not be written (disk full, incompatible existing file, ...)."""


class AuxiliaryError(L2psError):
    """Auxiliary data (DEM, water vapour database, AOD tables, co-registration base) is unusable."""


class ProcessingError(L2psError):
    """A processing stage cannot continue for this image (e.g. co-registration failed)."""
