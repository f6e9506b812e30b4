"""The one exception type that means "the user asked for something we cannot do".

The CLI prints a `TuneforkError` as one sentence and exits non-zero without a traceback; anything else is a bug
and keeps its traceback. Subclasses exist only so callers can catch one family (config, data, model folder).

`ConfigError` and `did_you_mean` live here, not in `tunefork.config`, because the config schema and the sections it
embeds from other packages (the adapters) both raise them: at the bottom of the import graph neither needs the other.
"""

from __future__ import annotations

import difflib


class TuneforkError(Exception):
    """A user mistake or an unsupported request, explained in one sentence."""


class ConfigError(TuneforkError):
    """An invalid config. `errors` holds every problem; `str()` shows the first one and how many follow."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        super().__init__(errors[0] + more)


class DataError(TuneforkError):
    """A dataset that cannot be read or does not fit the config (names the file and column)."""


class ModelFolderError(TuneforkError):
    """A model directory that is missing, incomplete or unsafe to load."""


class DivergedError(TuneforkError):
    """Training stopped because its loss (or its weights) became NaN or infinite. `best` is the history's best
    evaluation so far (`History.best`: step, split, metric, value) or None; the run lifecycle adds what was kept."""

    def __init__(self, message: str, best: dict | None = None):
        self.best = best
        super().__init__(message)


def did_you_mean(word, choices) -> str:
    """` (did you mean 'x'?)` for the closest of `choices` to `word`, or "" when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception, to quote inside our one sentence (its class name when it is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
