"""What tunefork agrees to load. Weights are read as safetensors only: a pickle file (`.bin`, `.pt`) can run code
when unpickled, so a model offering only pickle weights is refused unless the user allows it for this process
(`tunefork --allow-pickle ...`, `Model(..., allow_pickle=True)` or TUNEFORK_ALLOW_PICKLE=1)."""

from __future__ import annotations

import os

_allowed = False


def allow_pickle(allowed: bool = True) -> None:
    global _allowed
    _allowed = allowed


def pickle_allowed() -> bool:
    return _allowed or os.environ.get("TUNEFORK_ALLOW_PICKLE") == "1"


def refusal(source: str) -> str:
    return (f"'{source}' offers no safetensors weights, only pickle files, which can run code when loaded; "
            "pass --allow-pickle (or Model(..., allow_pickle=True)) if you trust it")
