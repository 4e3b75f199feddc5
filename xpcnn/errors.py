"""The project's error types: what the ``xpcnn`` command reports as one line.

An :class:`XpcnnError` is a problem with the user's input or environment (a bad
option value, a damaged file, a missing library or GPU), never a bug; the
command line shows anything else with its traceback. Every expected failure in
xpcnn derives from it (``DeviceError``, ``DatasetError``, ``IDXError``,
``CheckpointError``, ``TrainingDiverged``, ...), often beside the built-in type
it used to be (``ValueError``, ``RuntimeError``), so ``except ValueError`` in
older code still catches it.
"""

from __future__ import annotations

__all__ = ["ConfigError", "RunError", "XpcnnError"]


class XpcnnError(Exception):
    """Base of the errors xpcnn raises for bad input or environment.

    ``status`` is the exit status ``xpcnn`` ends with; ``collective`` is True
    when the error is raised on every rank of a data-parallel run at once (rank 0
    alone reports it, and no rank aborts the job).
    """

    status: int = 2
    collective: bool = False


class ConfigError(XpcnnError, ValueError):
    """An option or argument value that cannot be used (the message says the fix)."""


class RunError(XpcnnError):
    """A training run that cannot start or did not finish, with its exit status;
    ``collective``: raised on every rank of a data-parallel run at once."""

    def __init__(self, message: str, status: int = 2, collective: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.collective = collective
