"""What tunefork agrees to load, and what it lets run.

Weights are read as safetensors only: a pickle file (`.bin`, `.pt`) can run code when unpickled, so a model offering
only pickle weights is refused unless the user allows it for this process (`tunefork --allow-pickle ...`,
`Model(..., allow_pickle=True)` or TUNEFORK_ALLOW_PICKLE=1).

Code shipped with a model (an `auto_map` naming a `.py` file, which transformers imports under
`trust_remote_code=True`) runs only when the user says so: in their own training config (`trust_remote_code: true`),
or, for a model folder, on the command line (`--trust-remote-code` on predict, evaluate, serve, export) or through
`Model.load(..., trust_remote_code=True)`. What a model folder says about it is never obeyed: a folder is data that may
come from anyone, so its own config cannot grant itself the right to run code. The command-line flag is kept for this
process, as `--allow-pickle` is, so that serve and export, which load through `Model.load`, honour it without each
passing it along.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_allowed = False
_remote_code = False

# The files in which transformers looks for an `auto_map` (config.json, tokenizer_config.json, and the other
# *_config.json it reads, such as generation_config.json or preprocessor_config.json).
CONFIG_SUFFIX = "config.json"


def allow_pickle(allowed: bool = True) -> None:
    global _allowed
    _allowed = allowed


def pickle_allowed() -> bool:
    return _allowed or os.environ.get("TUNEFORK_ALLOW_PICKLE") == "1"


def refusal(source: str) -> str:
    return (f"'{source}' offers no safetensors weights, only pickle files, which can run code when loaded; "
            "pass --allow-pickle (or Model(..., allow_pickle=True)) if you trust it")


def allow_remote_code(allowed: bool = True) -> None:
    """The command line's `--trust-remote-code`, for the model folders this process loads."""
    global _remote_code
    _remote_code = allowed


def remote_code_allowed() -> bool:
    return _remote_code


def shipped_code(folder) -> str | None:
    """The first file in `folder` (searched in full, symlinks followed once) through which loading it could run code
    shipped with it — a `.py` file, or a config JSON with an `auto_map` — as 'path (why)', or None.

    Both are refused, not only the auto_map: a `.py` file has no business in a folder tunefork wrote, and transformers
    resolves an auto_map's module relative to the folder, so either one is the folder asking to run its own code."""
    root = Path(folder)
    seen: set[str] = set()
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:  # a symlink loop
            subdirectories.clear()
            continue
        seen.add(real)
        for name in sorted(files):
            path = Path(directory) / name
            where = path.relative_to(root)
            if name.endswith(".py"):
                return f"{where} (Python code)"
            if name.endswith(CONFIG_SUFFIX) and _has_auto_map(path):
                return f"{where} (an auto_map)"
    return None


def _has_auto_map(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # unreadable: loading it fails later, with its own message, before any code could run
    return isinstance(data, dict) and "auto_map" in data


def remote_code_refusal(folder, what: str) -> str:
    return (f"{folder}: ships code that would run when the model is loaded ({what}); a model folder's own "
            "trust_remote_code is never obeyed, so pass --trust-remote-code (or Model.load(..., trust_remote_code=True)) "
            "only if you trust it")
