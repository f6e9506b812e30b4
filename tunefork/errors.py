"""The one exception type that means "the user asked for something we cannot do".

The CLI prints a `TuneforkError` as one sentence and exits non-zero without a traceback; anything else is a bug
and keeps its traceback. Subclasses exist only so callers can catch one family (config, data, model folder).
"""


class TuneforkError(Exception):
    """A user mistake or an unsupported request, explained in one sentence."""


class DataError(TuneforkError):
    """A dataset that cannot be read or does not fit the config (names the file and column)."""


class ModelFolderError(TuneforkError):
    """A model directory that is missing, incomplete or unsafe to load."""
