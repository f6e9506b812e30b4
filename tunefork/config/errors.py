"""A pydantic validation failure rewritten as a `ConfigError` whose messages are YAML paths people can act on.

`input_features[0].encoder.trainabel: unknown key (did you mean 'trainable'?)` — the path is rebuilt by walking
the user's own input alongside pydantic's error location, which drops the discriminator segments pydantic inserts
for tagged unions (`input_features.0.text.encoder...`).
"""

from __future__ import annotations

import re
from typing import Any

from tunefork.errors import ConfigError, did_you_mean


def yaml_path(loc: tuple, data: Any) -> str:
    """Turn pydantic's `loc` into `a.b[0].c`, skipping segments that are not keys of the user's input."""
    parts: list[str] = []
    for segment in loc:
        if isinstance(data, dict) and segment in data:
            parts.append(f".{segment}" if parts else str(segment))
            data = data[segment]
        elif isinstance(data, list) and isinstance(segment, int) and 0 <= segment < len(data):
            parts.append(f"[{segment}]")
            data = data[segment]
        # anything else is a union tag or a validator name that pydantic added: not part of the YAML path
    return "".join(parts) or "config"


def _shown(value) -> str:
    """A value quoted on one line: as written when it is printable text, else its repr (a newline stays visible)."""
    return f"'{value}'" if isinstance(value, str) and value.isprintable() else repr(value)


def _describe(error: dict, path: str) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "unknown_key":
        return f"{path}.{ctx['key']}: unknown key{ctx['hint']}" if path != "config" else f"{ctx['key']}: unknown key{ctx['hint']}"
    if kind == "missing":
        if isinstance(error["loc"][-1], int):  # a position in a fixed-length list, e.g. split probabilities
            return f"{path}: too few items (nothing at [{error['loc'][-1]}])"
        return f"{path}.{error['loc'][-1]}: required key is missing" if path != "config" else f"{error['loc'][-1]}: required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
        if kind == "union_tag_not_found":
            return f"{path}: missing 'type'"
        tag = ctx.get("tag")
        return f"{path}.type: {_shown(tag)} is not supported (one of: {', '.join(expected)}){did_you_mean(tag, expected)}"
    if kind == "literal_error":
        expected = [e.strip().strip("'") for e in str(ctx.get("expected", "")).replace(" or ", ",").split(",")]
        got = error.get("input")
        return f"{path}: {got!r} is not one of {', '.join(repr(e) for e in expected if e)}{did_you_mean(got, expected)}"
    if kind == "bad_type":
        given = error.get("input")
        expected = ctx["expected"].split(", ")
        tag = given.get("type") if isinstance(given, dict) else given
        if isinstance(given, dict) and "type" not in given:
            return f"{path}: missing 'type' (one of: {ctx['expected']})"
        if not isinstance(given, (dict, str)):
            return f"{path}: expected a mapping with a 'type' (one of: {ctx['expected']}), got {given!r}"
        where = f"{path}.type" if isinstance(given, dict) else path
        return f"{where}: {_shown(tag)} is not supported (one of: {ctx['expected']}){did_you_mean(tag, expected)}"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind == "value_error" and path == "config" and re.match(r"[\w.\[\]]+: ", message):
        return message  # a whole-config check that names its own key path
    return f"{path}: {message} (got {error.get('input')!r})" if kind != "value_error" else f"{path}: {message}"


def _union(errors: list[dict], path: str) -> str:
    """One sentence for a value no member of a union accepts (`batch_size: big` fails both int and 'auto')."""
    wanted = [e["msg"].removeprefix("Input should be ").split(", ")[0] for e in errors]
    return f"{path}: should be {' or '.join(dict.fromkeys(wanted))} (got {errors[0].get('input')!r})"


def from_validation_error(exc, data: Any) -> ConfigError:
    by_path: dict[str, list[dict]] = {}
    for error in exc.errors():
        by_path.setdefault(yaml_path(error["loc"], data), []).append(error)
    messages = []
    for path, errors in by_path.items():
        # several type errors on one value come from the members of a union: listing the first alone would
        # tell the user to write an integer where 'auto' is just as valid
        if len(errors) > 1 and all(e["msg"].startswith("Input should be ") for e in errors):
            messages.append(_union(errors, path))
        else:
            messages.extend(_describe(error, path) for error in errors)
    return ConfigError(list(dict.fromkeys(messages)))
