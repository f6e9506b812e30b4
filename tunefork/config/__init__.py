"""Config loading: YAML or dict → Ludwig translation → validated, frozen `Config` (or `LLMConfig` for
`model_type: llm`; `Config` stays the ECD class).

Importing this package pulls in pydantic and PyYAML only, so `check-config` is instant and offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunefork.config.llm import LLMConfig
from tunefork.config.ludwig import translate
from tunefork.config.schema import Config
from tunefork.errors import ConfigError, did_you_mean

__all__ = ["Config", "ConfigError", "LLMConfig", "load", "render"]
MODEL_TYPES = {"ecd": Config, "llm": LLMConfig}


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a UTF-8 text file"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}:{where}: {problem}"]) from None


def load(source: str | Path | dict | Config | LLMConfig) -> Config | LLMConfig:
    """Validate a config given as a YAML path, a dict, or an existing `Config` / `LLMConfig`."""
    if isinstance(source, (Config, LLMConfig)):
        return source
    raw = read_yaml(source) if isinstance(source, (str, Path)) else source
    if not isinstance(raw, dict):
        where = source if isinstance(source, (str, Path)) else "config"  # an empty YAML file reads as None
        raise ConfigError([f"{where}: expected a mapping with input_features and output_features, got {type(raw).__name__}"])
    schema = _schema(raw)
    translated = translate(raw)
    try:
        return schema.model_validate(translated)
    except ValidationError as exc:
        from tunefork.config.errors import from_validation_error

        raise from_validation_error(exc, translated) from None


def _schema(raw: dict):
    """The config class for `model_type` (ECD when absent, as in Ludwig)."""
    kind = raw.get("model_type", "ecd")
    if kind not in MODEL_TYPES:
        raise ConfigError([f"model_type: {kind!r} is not one of {', '.join(map(repr, MODEL_TYPES))}"
                           f"{did_you_mean(kind, MODEL_TYPES)}"])
    if kind == "ecd" and "base_model" in raw:
        raise ConfigError(["base_model: only used by model_type: llm (add `model_type: llm` to fine-tune a "
                           "generating LLM, or use an auto_transformer encoder for classification and regression)"])
    return MODEL_TYPES[kind]


def to_dict(config: Config) -> dict:
    return config.model_dump(mode="json")


def render(config: Config) -> str:
    """The full config with every default filled in, as YAML."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)
