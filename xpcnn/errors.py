"""The project's error types: what the ``xpcnn`` command reports as one line.

An :class:`XpcnnError` is a problem with the user's input or environment (a bad
option value, a damaged file), never a bug; the command line shows anything
else with its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "XpcnnError"]


class XpcnnError(Exception):
    """Base of the errors xpcnn raises for bad input or environment."""


class ConfigError(XpcnnError, ValueError):
    """An option or argument value that cannot be used (the message says the fix)."""
