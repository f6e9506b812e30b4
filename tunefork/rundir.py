"""The run directory: `results/<experiment>_<model>[_N]/` and the JSON/YAML records written into it."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import yaml


def new(output_directory: str | Path, experiment_name: str, model_name: str) -> Path:
    """The first free `<experiment>_<model>`, `<experiment>_<model>_1`, ... (Ludwig's naming); not created yet."""
    base = Path(output_directory) / f"{experiment_name}_{model_name}"
    candidate, n = base, 0
    while candidate.exists() or candidate.with_name(candidate.name + ".partial").exists():
        n += 1
        candidate = base.with_name(f"{base.name}_{n}")
    return candidate


def _clean(value):
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, allow_nan=False))
    tmp.replace(path)


def write_yaml(path: Path, data) -> None:
    path.write_text(yaml.safe_dump(_clean(data), sort_keys=False, allow_unicode=True))


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("tunefork", "torch", "transformers", "peft", "tokenizers", "safetensors", "pydantic"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = None
    return out
