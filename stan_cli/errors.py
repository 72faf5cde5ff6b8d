"""The library's own exceptions. Each message says what went wrong, which file, and what to do.

Only cli.py turns them into a red line on stderr and an exit code.
"""


class StanError(Exception):
    """Base class: a problem the user can fix (bad input, bad weights, bad output path)."""


class InputError(StanError):
    """A video, frame folder or training folder that cannot be used."""


class WeightsError(StanError):
    """A weights file that is missing, corrupt, or for another model."""


class OutputError(StanError):
    """An output location that cannot be written, or would overwrite a user's files."""


class TrainingError(StanError):
    """Training cannot continue (non-finite loss, a second run on the same output, ...)."""
