"""The dotted parameter paths of a `hyperopt` section: checked against the config, and applied to a trial's config.

Ludwig's forms: `trainer.learning_rate`, `combiner.fc_layers` (a whole list, searched with `choice`),
`input_features.<name>.encoder.adapter.r` (a feature list is addressed by feature name) and
`defaults.<type>.<section>.<key>`. A path is checked by walking the validated config, so a key left at its default
is as reachable as one written out, and the union member the config chose (this encoder, that adapter) decides
which keys exist; then each discrete value and each range bound is written into the config and validated, so a value
the config would refuse fails here, before Ray starts, not in a trial.
"""

from __future__ import annotations

import copy
import difflib

from tunefork import config as config_mod
from tunefork.config.features import INPUT_TYPES, OUTPUT_TYPES
from tunefork.config.ludwig import DEFAULT_SECTIONS, ROLE_SECTIONS
from tunefork.errors import ConfigError, did_you_mean
from tunefork.sections import Section

LISTS = ("input_features", "output_features")


def _nearest(done: list[str], part: str, choices) -> str:
    close = difflib.get_close_matches(part, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{'.'.join([*done, close[0]])}'?)" if close else ""


def _walk(node, parts: list[str], done: list[str]) -> str | None:
    """Why `parts` does not lead anywhere from `node` (reached through `done`), or None when it does."""
    for part in parts:
        here = ".".join(done) or "the config"
        if isinstance(node, list) and node and hasattr(node[0], "name"):
            names = [f.name for f in node]
            if part not in names:
                return (f"'{here}' has no feature named '{part}' (features are addressed by name: "
                        f"{', '.join(names)}){_nearest(done, part, names)}")
            node = node[names.index(part)]
        elif isinstance(node, Section):
            fields = [f for f in type(node).model_fields if f != "hyperopt"]
            if part not in fields:
                return f"'{'.'.join([*done, part])}' is not a config path{_nearest(done, part, fields)}"
            node = getattr(node, part)
        elif isinstance(node, dict):  # a free mapping (pretrained_kwargs, resources_per_worker): any key
            node = node.get(part)
        elif node is None:
            return f"'{here}' is not set in the config, so it has no '{part}'; set {here} there first"
        else:
            return f"'{here}' is a value ({node!r}), not a section with '{part}' (search '{here}' itself)"
        done = [*done, part]
    return None


def _defaults(config, parts: list[str]) -> str | None:
    """`defaults.<type>.<section>.<key>`: the key must exist in that section of a feature of that type."""
    kinds = sorted(set(INPUT_TYPES) | set(OUTPUT_TYPES))
    if len(parts) < 4:
        return "a defaults path names a feature type, a section and a key: defaults.<type>.<section>.<key>"
    kind, section = parts[1], parts[2]
    if kind not in kinds:
        return f"'defaults.{kind}' is not a feature type{_nearest(['defaults'], kind, kinds)}"
    if section not in DEFAULT_SECTIONS:
        return f"'defaults.{kind}.{section}' is not a defaults section{_nearest(['defaults', kind], section, DEFAULT_SECTIONS)}"
    features = [f for role in LISTS if section in ROLE_SECTIONS[role] for f in getattr(config, role, [])
                if f.type == kind and getattr(f, section, None) is not None]
    if not features:
        return f"no {kind} feature of this config has a {section} for defaults.{kind}.{section} to set"
    return _walk(getattr(features[0], section), parts[3:], parts[:3])


def problem(config, path: str) -> str | None:
    """Why `path` is not a config path of `config`, naming the nearest valid one; None when it is."""
    parts = path.split(".")
    if not all(parts):
        return f"'{path}' is not a dotted config path (e.g. trainer.learning_rate)"
    if parts[0] == "defaults":
        return _defaults(config, parts)
    if parts[0] == "hyperopt":
        return "a search cannot search its own settings"
    return _walk(config, parts, [])


def probes(parameter) -> list:
    """The values a parameter is checked with before the search: every discrete value, else the range's bounds."""
    if parameter.space in ("choice", "grid_search"):
        return list(parameter.categories or parameter.values)
    if parameter.space in ("randn", "qrandn"):
        return [parameter.mean]
    whole = "randint" in parameter.space
    return [int(v) if whole else v for v in (parameter.lower, parameter.upper)]


def apply(raw: dict, values: dict, dumped: bool = False) -> dict:
    """A trial's config: `raw` (the user's config, or a full `dumped` one) without its `hyperopt` section, with each
    dotted path set to its value. A `defaults.*` path goes into Ludwig's defaults section, under which a feature's
    own setting still wins; a dumped config has that layer merged already, so it sets every feature of the type."""
    out = copy.deepcopy(raw)
    out.pop("hyperopt", None)
    for path, value in values.items():
        parts = path.split(".")
        if dumped and parts[0] == "defaults":
            kind, section = parts[1], parts[2]
            for role in LISTS:
                for feature in out.get(role, []):
                    if feature.get("type") == kind and section in ROLE_SECTIONS[role]:
                        _set(feature, [section, *parts[3:]], value)
        else:
            _set(out, parts, value)
    return out


def _set(node: dict, parts: list[str], value) -> None:
    for part in parts[:-1]:
        if isinstance(node, list):
            node = next(f for f in node if isinstance(f, dict) and f.get("name") == part)
            continue
        child = node.get(part)
        if isinstance(child, str):  # Ludwig's shorthand `encoder: bert`, `adapter: lora`
            child = node[part] = {"type": child}
        elif child is None:
            child = node[part] = {}
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def check(config, raw: dict, dumped: bool = False) -> None:
    """Every parameter path exists and every probed value is one the config accepts, else one ConfigError listing
    each problem, each naming its `hyperopt.parameters.<path>`."""
    errors = []
    for path, parameter in config.hyperopt.parameters.items():
        why = problem(config, path)
        if why is not None:
            errors.append(f"hyperopt.parameters.{path}: {why}")
            continue
        for value in probes(parameter):
            try:
                config_mod.load(apply(raw, {path: value}, dumped))
            except ConfigError as exc:
                errors.append(f"hyperopt.parameters.{path}: the value {value!r} is refused ({exc.errors[0]})")
                break
    if errors:
        raise ConfigError(errors)


def check_metric(config, reported) -> None:
    """`metric` is one `output_feature` reports (`reported(config, field)`: the plan's list); combined: loss only."""
    hyperopt = config.hyperopt
    outputs = [f.name for f in config.output_features]
    field, metric = hyperopt.output_feature, hyperopt.metric
    if field != "combined" and field not in outputs:
        raise ConfigError([f"hyperopt.output_feature: '{field}' is neither 'combined' nor an output feature "
                           f"({', '.join(outputs)}){did_you_mean(field, outputs)}"])
    allowed = reported(config, field)
    if metric in allowed:
        return
    if field == "combined":
        raise ConfigError([f"hyperopt.metric: '{metric}' with output_feature combined: the combined output reports "
                           f"loss only (Ludwig's rule); set metric: loss, or output_feature to one of: {', '.join(outputs)}"])
    raise ConfigError([f"hyperopt.metric: '{metric}' is not reported for '{field}' (one of: {', '.join(allowed)})"
                       f"{did_you_mean(metric, allowed)}"])
