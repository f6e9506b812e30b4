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


MAX_BYTES = 1 << 20  # 1 MiB: a Ludwig config is a few KB; anything near this is not a config
MAX_NODES = 100_000  # YAML values after alias expansion: far above any real config, far below an alias bomb


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a key that appears twice in one mapping (PyYAML keeps the last silently, so a
    second `trainer:` would replace the first). Keys brought in by a merge (`<<: *base`) may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error says it
                    break
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, limit: int) -> int:
    """How many values the document holds with every alias expanded, counting up to `limit` at most.

    PyYAML shares one node per anchor, so loading an alias bomb (each level aliasing the one before it ten times) is
    cheap; the exponential cost comes later, in validating or rendering the nested Python objects. Walking the node
    graph with an explicit stack and stopping at `limit` bounds this check itself to `limit` steps — milliseconds —
    and a recursive alias (`&a [*a]`) ends there too."""
    count, stack = 0, [node]
    while stack and count < limit:
        current = stack.pop()
        count += 1
        if isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.extend((key, value))
    return count


def _parse(text: str, path: Path) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_NODES + 1) > MAX_NODES:
            raise ConfigError([f"{path}: expands to more than {MAX_NODES:,} values through its aliases "
                               "(&anchor / *alias); a config is far smaller"])
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """The YAML at `path`, read safely: no tags that build objects, no duplicate keys, bounded size and expansion."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError([f"{path}: {size / 2**20:.1f} MiB is too large for a config file (at most {MAX_BYTES // 2**20} MiB)"])
    try:
        return parse_yaml(path.read_text(encoding="utf-8"), path)
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a UTF-8 text file"]) from None


def parse_yaml(text: str, where: str | Path) -> Any:
    """YAML (or JSON) text read as safely as `read_yaml` reads a file; errors name `where` (a file, or a flag such as
    --config_str)."""
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise ConfigError([f"{where}: too large for a config (at most {MAX_BYTES // 2**20} MiB)"])
    path = Path(str(where))
    try:
        return _parse(text, path)
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply to be a config"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}:{at}: {problem}"]) from None


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
