"""Everything a config can be checked against without its data, so a bad config fails in about a second — in
`check-config`, and at the start of `train`, before any data is read or preprocessed.

Beyond the schema (`config.load`) that means:

- `trainer.validation_metric` is one the evaluation reports for `validation_field` (the plan's own check);
- a `hyperopt` section's parameter paths, values and metric (`tunefork.hyperopt.paths`);
- a causal LM's `prompt.template` does not read the output's column (the model would be shown the answer) and
  reads at least one other column;
- what only the model's own `config.json` shows: a `max_sequence_length` the user set past the positions the model
  can embed, and whether each adapter fits the architecture (`adaption_prompt` on BERT, `target_modules` the model
  lacks). The adapter sections' own `check(model, where)` say so; the model they look at is a skeleton built from
  the config on the meta device (`from_config` under `torch.device("meta")`), so no weight is read or allocated.

Only sequence lengths the user chose are refused: the default (256 for ECD text) is still cut to the model's limit
with a note, as before, since the user asked for nothing the model cannot do.

torch and transformers are imported only when a model's config is read, so `import tunefork.check` stays light.
"""

from __future__ import annotations

from pathlib import Path

from tunefork import plan as plan_mod
from tunefork.config.features import is_transformer
from tunefork.errors import ConfigError, TuneforkError


def check(config, strict: bool = True) -> str | None:
    """Raise ConfigError for what cannot work with this config. A model config that cannot be read is an error,
    except with `strict=False` (check-config) for a hub id that is out of reach (offline): then the model checks are
    skipped and the reason is returned. A local path that cannot be read is an error either way."""
    plan_mod.check_validation_metric(config)  # the sentence `resolve` gives, before any data is read
    if config.hyperopt is not None:  # its paths, values and metric (`tunefork hyperopt` checks them first too)
        from tunefork import config as config_mod
        from tunefork.hyperopt import paths

        paths.check(config, config_mod.to_dict(config), dumped=True)
        paths.check_metric(config, plan_mod.reported_metrics)
    if config.model_type == "llm":
        models = [("base_model", config.base_model, config.pretrained_kwargs, config.trust_remote_code, True,
                   _llm_lengths(config), _fresh_adapter(config.adapter), "adapter")]
    else:
        models = [(f"input_features[{i}].encoder.pretrained_model_name_or_path", f.encoder.pretrained_model_name_or_path,
                   f.encoder.pretrained_kwargs, f.encoder.trust_remote_code, False, _ecd_lengths(f, i),
                   _fresh_adapter(f.encoder.adapter), f"input_features[{i}].encoder.adapter")
                  for i, f in enumerate(config.input_features) if is_transformer(f)]
    skipped = []
    for where, source, kwargs, trust, causal, lengths, adapter, adapter_where in models:
        hf_config = _read_config(source, kwargs, trust, where, strict, skipped)
        if hf_config is None:
            continue
        _check_lengths(hf_config, source, lengths)
        if adapter is not None:
            adapter.check(skeleton(hf_config, causal, trust, where, source), adapter_where)
    return "; ".join(skipped) or None


def _fresh_adapter(adapter):
    """The adapter a run attaches fresh (and so checks against the model), or None: a `pretrained_adapter_weights`
    adapter takes its shape from the saved one, which is checked when it is loaded."""
    return adapter if adapter is not None and not adapter.pretrained_adapter_weights else None


def _ecd_lengths(feature, i: int) -> list[tuple[str, int]]:
    """The text feature's max_sequence_length when the user chose it. The default's value counts as the default
    even when written out, so a rendered config (render-config, or the one a run saves and a resume reloads) checks
    as its source did."""
    preprocessing = feature.preprocessing
    default = type(preprocessing).model_fields["max_sequence_length"].default
    return ([(f"input_features[{i}].preprocessing.max_sequence_length", preprocessing.max_sequence_length)]
            if preprocessing.max_sequence_length != default else [])


def _llm_lengths(config) -> list[tuple[str, int]]:
    asked = [("input_features[0].preprocessing.max_sequence_length", config.input.preprocessing.max_sequence_length),
             ("output_features[0].preprocessing.max_sequence_length", config.output.preprocessing.max_sequence_length),
             ("preprocessing.global_max_sequence_length", config.preprocessing.global_max_sequence_length)]
    return [(key, value) for key, value in asked if value is not None]


def _check_lengths(hf_config, source, lengths: list[tuple[str, int]]) -> None:
    from tunefork import hf

    limit = hf.context_length(hf_config)
    for key, value in lengths:
        if limit is not None and value > limit:
            raise ConfigError([f"{key}: {value} is more than the {limit} positions the model '{source}' can embed; "
                               f"use at most {limit}"])


def _read_config(source, kwargs, trust, where, strict: bool, skipped: list):
    from tunefork import hf

    if _looks_local(source) and not Path(source).expanduser().exists():
        raise TuneforkError(f"{where} '{source}': no such folder (nor a hub id: those read 'org/name')")
    try:
        return hf.load_config(source, kwargs, trust, where=where)
    except TuneforkError as exc:
        if strict or _looks_local(source):
            raise
        skipped.append(str(exc))
        return None


def _looks_local(source: str) -> bool:
    """A path rather than a hub id ('org/name'): it exists, or is written as a path."""
    return Path(source).exists() or source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def skeleton(hf_config, causal_lm: bool, trust_remote_code: bool, where: str, source):
    """The model's modules with no weights: parameters on the meta device take no memory and nothing is read."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if causal_lm else AutoModel
    try:
        with torch.device("meta"):
            return auto.from_config(hf_config, trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, KeyError) as exc:
        from tunefork.errors import first_line

        raise TuneforkError(f"{where} '{source}': cannot build the model from its config ({first_line(exc)})") from None
