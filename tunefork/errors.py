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

    def __reduce__(self):  # pickled whole (a Ray trial's error reaches the driver so), not rebuilt from the text
        return type(self), (self.errors,)


class EnvironmentFailure(Exception):
    """The machine refused what a correct request needs: a full disk, a missing permission, a read-only or
    file-in-the-way path. Not a `TuneforkError` (the user's request was fine), so the CLI exits 1, not 2; it is
    still one sentence, naming the path and what to do about it. `environment_failure` makes one from an OSError."""


ENVIRONMENT_ERRNOS = {  # errno name → what it means for a path, in the user's words
    "ENOSPC": "no space left on the device", "EFBIG": "file too large for the disk or its size limit",
    "EDQUOT": "disk quota exceeded", "EACCES": "permission denied", "EPERM": "operation not permitted",
    "EROFS": "read-only file system", "ENOTDIR": "a part of the path is a file, not a folder",
    "EISDIR": "is a folder, not a file", "EEXIST": "a file is in the way of a folder", "EIO": "input/output error",
}


def os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: itself, or the one safetensors reports only in its text ("I/O error: File too
    large (os error 27)"); None for anything else."""
    import re

    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return OSError(int(found.group(1)), str(exc)) if type(exc).__name__ == "SafetensorError" and found else None


def environment_failure(exc: BaseException, doing: str | None = None, path=None) -> EnvironmentFailure | None:
    """`exc` as an EnvironmentFailure ("<path>: cannot <doing> (<reason>)", or "<path>: <reason>" without `doing`),
    or None when it is not an OSError whose errno is in `ENVIRONMENT_ERRNOS` (a missing file, say, is the caller's
    to explain). `path` names the file when the error does not (numpy's and safetensors' errors carry none)."""
    import errno as errno_mod

    error = os_error(exc)
    name = errno_mod.errorcode.get(error.errno or 0) if error is not None else None
    if name not in ENVIRONMENT_ERRNOS:
        return None
    path = error.filename or path
    where, reason = f"{path}: " if path else "", ENVIRONMENT_ERRNOS[name]
    return EnvironmentFailure(f"{where}cannot {doing} ({reason})" if doing else f"{where}{reason}")


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


def shown_key(key) -> str:
    """A key as a config path shows it, on one line: as written when it is printable text, else its repr."""
    return key if isinstance(key, str) and key.isprintable() and key else repr(key)


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception, to quote inside our one sentence (its class name when it is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
