"""Errors the library raises for bad input.

Every error names the thing that was wrong (file, key, option), what was
expected, what was found and, where there is one, what to do. The command line
turns them into one line on stderr and an exit code.
"""


class NembedError(Exception):
    """A failed operation on well-formed arguments (exit code 1)."""


class UsageError(NembedError):
    """An argument or option the user gave is invalid (exit code 2)."""


class CheckpointError(NembedError):
    """A checkpoint could not be read or matched to a known architecture."""


class DatasetError(NembedError):
    """A dataset could not be found or read."""
