"""Ludwig's config conventions, rewritten into tunefork's schema before validation. Every rewrite is logged.

Only conventions that carry a meaning here are translated; anything else reaches the schema and is refused there.
"""

from __future__ import annotations

import copy
import logging

from tunefork.config.features import INPUT_TYPES, OUTPUT_TYPES
from tunefork.errors import ConfigError, did_you_mean, shown_key

log = logging.getLogger("tunefork.config")

# Ludwig's named Hugging Face encoders and the checkpoint each one loads by default.
NAMED_TRANSFORMERS = {
    "bert": "bert-base-uncased",
    "distilbert": "distilbert-base-uncased",
    "roberta": "roberta-base",
    "albert": "albert-base-v2",
    "electra": "google/electra-small-discriminator",
    "xlmroberta": "xlm-roberta-base",
    "camembert": "camembert-base",
    "deberta": "sileod/deberta-v3-base-tasksource-nli",
    "gpt2": "gpt2",
    "t5": "t5-small",
    "mt5": "google/mt5-base",
    "longformer": "allenai/longformer-base-4096",
    # state-space models, through transformers' MambaModel / Mamba2Model
    "mamba": "state-spaces/mamba-130m-hf",
    "mamba2": None,  # no small Mamba-2 checkpoint in transformers' format to default to: name one
}
DEFAULT_SECTIONS = ("preprocessing", "encoder", "decoder", "loss")
# `defaults.category` serves inputs and outputs alike: each takes only the sections it has (Ludwig's rule).
ROLE_SECTIONS = {"input_features": ("preprocessing", "encoder"), "output_features": ("preprocessing", "decoder", "loss")}
# Ludwig's feature types that have no counterpart here, and what to write instead
OTHER_TYPES = {
    "image": "tunefork trains text and tabular models; describe the image with text, category or number columns",
    "audio": "tunefork trains text and tabular models; use a text feature holding a transcript",
    "sequence": "use a text feature (its tokenizer reads the sequence), or model_type: llm to generate one",
    "timeseries": "use number features, one column per time step",
    "vector": "use number features, one column per component",
    "date": "use category or number features derived from the date (year, month, weekday)",
    "h3": "use number features for latitude and longitude, or a category feature for the cell",
    "bag": "use a text feature holding the items",
}
# Keys Ludwig writes into saved configs that are derived from the data or tokenizer, never set by a user.
DERIVED_ENCODER_KEYS = ("vocab", "vocab_size", "saved_weights_in_checkpoint", "skip")
SCRATCH_ENCODERS = ("embed", "parallel_cnn", "stacked_cnn", "rnn", "cnnrnn")
# Ludwig keys of the encoders trained from scratch that tunefork does not implement: accepted at Ludwig's default (a
# saved Ludwig config writes them all), otherwise refused with what to write instead.
AT_DEFAULT_ONLY = {
    "weights_initializer": ((None, "xavier_uniform", "uniform"), "torch's default initialisation is used; remove it"),
    "bias_initializer": ((None, "zeros"), "biases start at zero; remove it"),
    "recurrent_initializer": ((None, "orthogonal"), "recurrent weights start as torch initialises them; remove it"),
    "recurrent_activation": ((None, "sigmoid"), "the gates of torch's lstm and gru are sigmoids; remove it"),
    "embeddings_on_cpu": ((None, False), "embeddings stay with the model on its device; remove it"),
    "should_embed": ((None, True), "text is always embedded from its token ids; remove it"),
    "norm_params": ((None, {}), "norms use torch's defaults; remove it"),
}
# Ludwig 0.8's names of the LLM output decoders, still written on its structured-output page.
PARSER_DECODERS = {"text_parser": "text_extractor", "category_parser": "category_extractor"}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _defaults(raw: dict) -> dict:
    defaults = copy.deepcopy(raw.pop("defaults", None) or {})
    if not isinstance(defaults, dict):
        raise ConfigError([f"defaults: expected a mapping of feature type to settings, got {defaults!r}"])
    preprocessing = raw.get("preprocessing")
    per_type = {k: v for k, v in preprocessing.items() if k in set(INPUT_TYPES) | set(OUTPUT_TYPES)} if isinstance(preprocessing, dict) else {}
    for ftype, settings in per_type.items():
        log.info("preprocessing.%s moved to defaults.%s.preprocessing (older Ludwig layout)", ftype, ftype)
        raw["preprocessing"].pop(ftype)
        defaults = _merge(defaults, {ftype: {"preprocessing": settings}})
    known_types = sorted(set(INPUT_TYPES) | set(OUTPUT_TYPES))
    for ftype, sections in defaults.items():
        if ftype not in known_types:
            raise ConfigError([f"defaults.{shown_key(ftype)}: unknown feature type{did_you_mean(ftype, known_types)}"])
        if not isinstance(sections, dict):
            raise ConfigError([f"defaults.{ftype}: expected a mapping, got {sections!r}"])
        for section, value in sections.items():
            if section not in DEFAULT_SECTIONS:
                raise ConfigError([f"defaults.{ftype}.{shown_key(section)}: unknown key"
                                   f"{did_you_mean(section, DEFAULT_SECTIONS)}"])
            if not isinstance(value, dict):
                raise ConfigError([f"defaults.{ftype}.{section}: expected a mapping, got {value!r}"])
    return defaults


def _apply_defaults(feature: dict, defaults: dict, path: str, sections: tuple[str, ...]) -> dict:
    kind = feature.get("type")
    if not isinstance(kind, str):
        return feature  # a missing or malformed type is reported by the schema
    for section, value in (defaults.get(kind) or {}).items():
        if section not in sections:
            continue
        mine = feature.get(section)
        if mine is not None and not isinstance(mine, dict):
            continue  # a wrong type here is reported by the schema with the feature's own path
        feature[section] = _merge(value, mine or {})
        log.info("%s.%s: merged defaults.%s.%s", path, section, feature["type"], section)
    return feature


def _encoder(feature: dict, path: str) -> None:
    encoder = feature.get("encoder")
    if isinstance(encoder, str):
        encoder = feature["encoder"] = {"type": encoder}
    if not isinstance(encoder, dict):
        return
    if encoder.get("type") == "llm":  # Ludwig's LLM encoder: a causal LM's last hidden state, as a text encoder
        encoder["type"] = "auto_transformer"
        if "base_model" in encoder:
            encoder["pretrained_model_name_or_path"] = encoder.pop("base_model")
        log.info("%s.encoder: Ludwig's 'llm' encoder is auto_transformer on %s (pooled at the last real token)", path,
                 encoder.get("pretrained_model_name_or_path"))
    if isinstance(encoder.get("type"), str) and encoder["type"] in NAMED_TRANSFORMERS:
        name = encoder["type"]
        encoder["type"] = "auto_transformer"
        if NAMED_TRANSFORMERS[name] is not None:
            encoder.setdefault("pretrained_model_name_or_path", NAMED_TRANSFORMERS[name])
        log.info("%s.encoder: Ludwig's '%s' encoder is auto_transformer on %s", path, name, encoder.get("pretrained_model_name_or_path"))
    if "type" not in encoder and "pretrained_model_name_or_path" in encoder and feature.get("type") == "text":
        encoder["type"] = "auto_transformer"
        log.info("%s.encoder: a pretrained_model_name_or_path without a type is an auto_transformer", path)
    if "max_sequence_length" in encoder and feature.get("type") == "text":
        length = encoder.pop("max_sequence_length")
        preprocessing = feature.setdefault("preprocessing", {})
        if isinstance(preprocessing, dict) and length is not None:
            preprocessing.setdefault("max_sequence_length", length)
            log.info("%s.encoder.max_sequence_length moved to preprocessing.max_sequence_length", path)
    for key in DERIVED_ENCODER_KEYS:
        if key in encoder:
            encoder.pop(key)
            log.info("%s.encoder.%s ignored: derived from the model and tokenizer", path, key)
    if feature.get("type") in ("text", "set") and encoder.get("type", "parallel_cnn") in SCRATCH_ENCODERS:
        _at_default_only(encoder, f"{path}.encoder")


def _level(feature: dict, path: str) -> None:
    """Ludwig before 0.5: `level: word` or `level: char` on a text feature chose the tokenizer."""
    if feature.get("type") != "text" or feature.get("level") not in ("word", "char"):
        return
    level = feature.pop("level")
    preprocessing = feature.setdefault("preprocessing", {})
    if isinstance(preprocessing, dict) and level == "char":
        preprocessing.setdefault("tokenizer", "characters")
    log.info("%s.level: %s (Ludwig before 0.5) is the %s tokenizer", path, level,
             "characters" if level == "char" else "default space_punct")


def _at_default_only(encoder: dict, path: str) -> None:
    for key, (defaults, instead) in AT_DEFAULT_ONLY.items():
        if key not in encoder:
            continue
        value = encoder.pop(key)
        if value not in defaults:
            raise ConfigError([f"{path}.{key}: {value!r} is not supported here ({instead})"])
        log.info("%s.%s: %r is Ludwig's default, which tunefork also uses", path, key, value)


# An output's fully connected stack: on the feature itself in Ludwig before 0.5, inside `decoder` since; and inside
# `decoder`, unprefixed in Ludwig 0.5-0.7 (their `use_bias` and initializers were the final layer's: not moved).
STACK_KEYS = ("fc_layers", "num_fc_layers", "fc_output_size", "fc_dropout", "fc_activation", "fc_norm", "fc_norm_params",
              "fc_use_bias", "fc_weights_initializer", "fc_bias_initializer")
UNPREFIXED_STACK_KEYS = ("output_size", "activation", "dropout", "norm", "norm_params")


def _decoder(feature: dict, path: str) -> None:
    moved = [key for key in STACK_KEYS if key in feature]
    if moved and isinstance(feature.setdefault("decoder", {}), dict):
        for key in moved:
            feature["decoder"].setdefault(key, feature.pop(key))
            log.info("%s.%s moved to %s.decoder.%s (older Ludwig layout)", path, key, path, key)
    decoder = feature.get("decoder")
    if isinstance(decoder, dict) and (decoder.get("type") or "classifier") in ("classifier", "regressor"):
        for key in UNPREFIXED_STACK_KEYS:
            if key in decoder and f"fc_{key}" not in decoder:
                decoder[f"fc_{key}"] = decoder.pop(key)
                log.info("%s.decoder.%s is decoder.fc_%s (Ludwig 0.5-0.7 name)", path, key, key)


def _refuse_other_types(raw: dict) -> None:
    """Ludwig's image, audio, sequence, ... features: one line each, saying what to write instead."""
    errors = []
    for key in ("input_features", "output_features"):
        features = raw.get(key)
        for i, feature in enumerate(features if isinstance(features, list) else []):
            kind = feature.get("type") if isinstance(feature, dict) else None
            if isinstance(kind, str) and kind in OTHER_TYPES:
                errors.append(f"{key}[{i}].type: '{kind}' is not supported: {OTHER_TYPES[kind]}")
    if errors:
        raise ConfigError(errors)


def _deepspeed_backend(raw: dict) -> None:
    """Ludwig's older `backend: {type: deepspeed, zero_optimization: ...}` is its Ray backend with a DeepSpeed
    strategy (`backend.trainer.strategy`), which runs as the FSDP2 sharding of the same memory class."""
    backend = raw.get("backend")
    if isinstance(backend, dict) and backend.get("type") == "deepspeed":
        strategy = {k: v for k, v in backend.items() if k != "type"}
        raw["backend"] = {"type": "ray", "trainer": {"strategy": {"type": "deepspeed", **strategy}}}
        log.info("backend: Ludwig's deepspeed backend is backend.type ray with trainer.strategy deepspeed")


def translate(raw: dict) -> dict:
    """Return a new dict in tunefork's schema; the caller's dict is never modified."""
    raw = copy.deepcopy(raw)
    if "ludwig_version" in raw:
        log.info("ludwig_version %s ignored", raw.pop("ludwig_version"))
    _older_names(raw)
    _refuse_other_types(raw)
    _deepspeed_backend(raw)
    defaults = _defaults(raw)
    for key in ("input_features", "output_features"):
        features = raw.get(key)
        if not isinstance(features, list):
            continue
        for i, feature in enumerate(features):
            if isinstance(feature, dict):
                path = f"{key}[{i}]"
                _apply_defaults(feature, defaults, path, ROLE_SECTIONS[key])
                if key == "input_features":
                    _encoder(feature, path)
                    _level(feature, path)
                elif raw.get("model_type") != "llm":
                    _decoder(feature, path)
                else:
                    _parser_decoder(feature, path)
    return raw


def _older_names(raw: dict) -> None:
    """Ludwig's names from before 0.5, which Ludwig itself still upgrades on load: `training:` is `trainer:`, and the
    `numerical` feature type is `number`."""
    if "training" in raw and "trainer" not in raw:
        raw["trainer"] = raw.pop("training")
        log.info("training: is trainer: (Ludwig before 0.5)")
    for key in ("input_features", "output_features"):
        features = raw.get(key)
        for i, feature in enumerate(features if isinstance(features, list) else []):
            if isinstance(feature, dict) and feature.get("type") == "numerical":
                feature["type"] = "number"
                log.info("%s[%d].type: numerical is number (Ludwig before 0.5)", key, i)


def _parser_decoder(feature: dict, path: str) -> None:
    decoder = feature.get("decoder")
    if isinstance(decoder, dict) and decoder.get("type") in PARSER_DECODERS:
        old = decoder["type"]
        decoder["type"] = PARSER_DECODERS[old]
        log.info("%s.decoder: Ludwig's '%s' is now '%s'", path, old, decoder["type"])
