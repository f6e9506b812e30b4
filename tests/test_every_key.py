"""Every accepted key has an effect (DESIGN.md): for each leaf key of the schema, of both model types, a tiny run with
the key moved off its default differs from the same run at the default — in the weights, the metrics, the plan, the
predictions or the files written.

How it works:

- `leaf_keys` walks the pydantic schema (`Config` for ECD, `LLMConfig` for llm): nested sections, every member of a
  tagged union (named `section[tag]`, by the member's first tag), list items (`[type]` for features, `[]` for plain
  lists such as `fc_layers`) and mapping values (`{}`, e.g. `match{}`). The `type` of a union with more than one tag is
  a key of its own (`trainer.optimizer.type`). A key that can hold only one value (a one-value Literal such as
  `model_type`, `trainer.type` of ECD, or `preprocessing.tokenizer`) is skipped by rule: there is no second value to
  move it to.
- `CASES` says, per key, the context that makes it matter (config overrides merged into the model type's base run) and
  the off-default value; where a value is not given it is derived (`off_default`): a bool flips, a Literal takes
  another member, a number doubles or halves. `EXEMPT` holds the keys a tiny run cannot show, with the reason;
  `RAY_PLAN_KEYS` the Ray backend keys the plan will record; `REFUSED` the keys whose off-default value the config
  must refuse for that model type, with the ConfigError expected. Coverage is asserted both ways: every walked key
  is in exactly one of those tables or derivable, and no table names a key the walker does not produce.
- Each case runs the context at its default and with the key moved, in process, on a 40-row table with a fixed split
  (24 / 8 / 8 rows), 2 epochs of batch 8 (6 optimizer steps) on the tiny offline models. The default run of each
  distinct context is made once and shared. The observables compared:
    weights      the trained state dict (names, shapes and values, exactly)
    metrics      training_statistics.json (it holds no timings)
    plan         the plan's values; the reasons are left out, as they name the key that decided (an echo)
    predictions  `predict` on 8 rows (4 for an LLM): what `top_k`, `threshold`, `clip`, `generation.*` change
    files        names and contents of the files written under the run's own temporary folder (the run directory
                 and any cache the config points there), minus those that echo the config (model_hyperparameters.json, peft's
                 adapter_config.json, description.json, resolved_config.yaml, whose plan is compared above) and the
                 volatile ones (efficiency.json timings, report.html). The cache the environment points to is outside.
    display      captured stdout and stderr, digits masked — only for keys whose effect is a display (a progress
                 bar), flagged `display=True`: elsewhere library warnings and timings would be noise.
  Two default runs with the same seed are asserted identical, once per model type, so a difference means the key.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import numpy as np
import pandas as pd
import pytest
import tiny
from pydantic import Tag

from tunefork.config import Config, ConfigError, LLMConfig
from tunefork.sections import Section

# ------------------------------------------------------------------------------------------------ the walker


def _unwrap(annotation):
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _members(annotation) -> list[tuple[str | None, Any]]:
    """The members of a (possibly tagged, possibly optional) union as (tag, type); a plain type is one member."""
    plain = _unwrap(annotation)
    if get_origin(plain) in (Union, types.UnionType):
        out = []
        for arg in get_args(plain):
            tags = [m.tag for m in get_args(arg)[1:] if isinstance(m, Tag)] if get_origin(arg) is Annotated else []
            out += [(tags[0] if tags else tag, member) for tag, member in _members(arg)]
        return out
    return [(None, plain)]


def _is_section(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, Section)


def _holds_section(kind) -> bool:
    kind = _unwrap(kind)
    return _is_section(kind) or any(_holds_section(a) for a in get_args(kind))


def _single_valued(annotation) -> bool:
    members = [kind for _, kind in _members(annotation)]
    return len(members) == 1 and get_origin(members[0]) is Literal and len(get_args(members[0])) == 1


@dataclass(frozen=True)
class Leaf:
    path: str
    annotation: Any
    default: Any  # the schema's default; None for a union's `type`, which the cases give explicitly


def leaf_keys(section: type[Section], prefix: str = "", skip_type: bool = False):
    for name, info in section.model_fields.items():
        if name == "type" and skip_type:  # a union member's tag: the union's `type` key stands for it
            continue
        yield from _walk(info.annotation, f"{prefix}.{name}" if prefix else name, info.default)


def _walk(annotation, path: str, default):
    sections = [(tag, kind) for tag, kind in _members(annotation) if _is_section(kind)]
    if not sections:
        for _, kind in _members(annotation):
            if get_origin(kind) is list and _holds_section(get_args(kind)[0]):
                yield from _items(get_args(kind)[0], path, "[]")
                return
            if get_origin(kind) is dict and _holds_section(get_args(kind)[1]):
                yield from _items(get_args(kind)[1], path, "{}")
                return
        if not _single_valued(annotation):
            yield Leaf(path, annotation, default)
        return
    if all(tag is None for tag, _ in sections):  # a plain (possibly optional) section
        for _, kind in sections:
            yield from leaf_keys(kind, path)
        return
    first_tag = {}
    for tag, kind in sections:
        first_tag.setdefault(kind, tag)
    if len(sections) > 1:
        yield Leaf(f"{path}.type", None, None)
    for kind, tag in first_tag.items():
        yield from leaf_keys(kind, f"{path}[{tag}]", skip_type=True)


def _items(item, path: str, brackets: str):
    sections = [(tag, kind) for tag, kind in _members(item) if _is_section(kind)]
    tagged = any(tag for tag, _ in sections)
    for tag, kind in sections:
        if not tagged and "type" in kind.model_fields and _single_valued(kind.model_fields["type"].annotation):
            tag = None  # LLM inputs: one type, so `input_features[]`
        yield from leaf_keys(kind, f"{path}[{tag}]" if tag else f"{path}{brackets}", skip_type=tagged)


LEAVES = {"ecd": {leaf.path: leaf for leaf in leaf_keys(Config)},
          "llm": {leaf.path: leaf for leaf in leaf_keys(LLMConfig)}}

# --------------------------------------------------------------------------------------------- the tables


@dataclass(frozen=True)
class Case:
    """A key's context (overrides merged into the base config; a `+name` list is appended to `name`) and its
    off-default value (None: derived by `off_default`). `Whole(...)` replaces the section that holds the key."""

    value: Any = None
    context: dict = field(default_factory=dict)
    display: bool = False


@dataclass(frozen=True)
class Whole:
    section: dict


# Placeholders, filled in per run: @bert / @llama / @gpt2 (the tiny models), @tmp (the run's own folder),
# @default_run (the run directory of the context's default run: a trained adapter to start from).

GHOST = {"virtual_batch_size": 4}  # of a batch of 8: two ghost batches, each normalised by its own statistics
BERT_TEXT = {"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 16},
             "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": "@bert"}}
TRAINER = {"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "early_stop": -1}
BASE = {
    "ecd": {
        "input_features": [BERT_TEXT, {"name": "genre", "type": "category"}, {"name": "length", "type": "number"},
                           {"name": "flag", "type": "binary"}],
        "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"},
                            {"name": "recommended", "type": "binary"}],
        "trainer": TRAINER,
        "preprocessing": {"split": {"type": "fixed"}},
    },
    "llm": {
        "model_type": "llm", "base_model": "@llama",
        "input_features": [{"name": "instruction", "type": "text"}],
        "output_features": [{"name": "output", "type": "text"}],
        "generation": {"max_new_tokens": 4},
        "trainer": {"type": "finetune", **TRAINER},
        "preprocessing": {"split": {"type": "fixed"}},
    },
}

# Contexts shared by every key under a path prefix (applied in order, before the case's own context).
TRAINABLE = {"input_features": [{**BERT_TEXT, "encoder": {**BERT_TEXT["encoder"], "trainable": True}}]}
# The tiny Llama as the text encoder. Its tokenizer adds no special tokens, so an empty text (the default fill of a
# missing one) would tokenize to nothing: fill with a word.
LLAMA_TEXT = {"input_features": [{**BERT_TEXT, "preprocessing": {"max_sequence_length": 16, "fill_value": "movie"},
                                  "encoder": {**BERT_TEXT["encoder"], "pretrained_model_name_or_path": "@llama"}}]}
# Evaluations that do not all improve: a learning rate too large for a steady descent, an evaluation every step.
PLATEAU = {"ecd": {"trainer": {"learning_rate": 0.5, "steps_per_checkpoint": 1, "epochs": 3, "optimizer": {"type": "sgd"}}},
           "llm": {"trainer": {"learning_rate": 1.0, "steps_per_checkpoint": 1, "epochs": 3}}}
# The encoders trained from scratch, small; a text input of one of them replaces the BERT one for its keys.
SCRATCH = {"embed": {"embedding_size": 4}, "parallel_cnn": {"embedding_size": 4, "num_filters": 4, "output_size": 4,
                                                            "num_fc_layers": 1},
           "stacked_cnn": {"embedding_size": 4, "num_filters": 4, "num_fc_layers": 0, "num_conv_layers": 2,
                           "pool_size": 2},
           "rnn": {"embedding_size": 4, "state_size": 4}, "cnnrnn": {"embedding_size": 4, "num_filters": 4, "state_size": 4}}


def scratch_text(kind: str, preprocessing: dict | None = None, **encoder) -> dict:
    text = {"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 16, **(preprocessing or {})},
            "encoder": {"type": kind, **SCRATCH[kind], **encoder}}
    return {"input_features": [text, *BASE["ecd"]["input_features"][1:]]}


SET_INPUT = {"name": "tags", "type": "set", "preprocessing": {"tokenizer": "comma"}}
SET_OUTPUT = {"name": "tags", "type": "set", "preprocessing": {"tokenizer": "comma"}}
PREFIX_CONTEXTS = {
    "ecd": [
        *[(rf"input_features\[text\]\.encoder\[{kind}\]", scratch_text(kind)) for kind in SCRATCH],
        (r"input_features\[text\]\.preprocessing\.(tokenizer|pretrained_model_name_or_path|vocab_file|most_common|"
         r"padding_symbol|unknown_symbol)", scratch_text("embed")),
        (r"input_features\[set\]", {"+input_features": [SET_INPUT]}),
        (r"output_features\[set\]", {"+output_features": [SET_OUTPUT]}),
        (r"input_features\[text\]\.encoder\[auto_transformer\]\.adapter\[adaption_prompt\]", LLAMA_TEXT),  # peft: llama, mistral, gpt2
        (r"output_features\[\w+\]\.decoder\.fc_", {"output_features": [
            {"name": "sentiment", "type": "category", "decoder": {"num_fc_layers": 1, "fc_output_size": 8}},
            {"name": "score", "type": "number", "decoder": {"num_fc_layers": 1, "fc_output_size": 8}},
            {"name": "recommended", "type": "binary", "decoder": {"num_fc_layers": 1, "fc_output_size": 8}}]}),
        (r"output_features\[\w+\]\.decoder\.fc_layers", {"output_features": [
            {"name": "sentiment", "type": "category", "decoder": {"fc_layers": [{"output_size": 8}]}},
            {"name": "score", "type": "number", "decoder": {"fc_layers": [{"output_size": 8}]}},
            {"name": "recommended", "type": "binary", "decoder": {"fc_layers": [{"output_size": 8}]}}]}),
        (r"combiner\[concat\]\.(dropout|activation|norm|norm_params|output_size|use_bias|\w+_initializer)$",
         {"combiner": {"num_fc_layers": 1}}),
        (r"combiner\[concat\]\.fc_layers", {"combiner": {"fc_layers": [{"output_size": 8}]}}),
        (r"combiner\[comparator\]", {"+input_features": [{"name": "length2", "type": "number"}],
                                     "combiner": {"type": "comparator", "entity_1": ["review", "genre"],
                                                  "entity_2": ["length", "flag", "length2"], "output_size": 8}}),
        (r"combiner\[comparator\]\.fc_layers", {"combiner": {"fc_layers": [{"output_size": 8}]}}),
        (r"preprocessing\.split\[stratify\]", {"preprocessing": {"split": {"type": "stratify", "column": "recommended"}}}),
    ],
    "llm": [
        (r"output_features\[category\]", {"output_features": [{"name": "output", "type": "category"}]}),
        (r"preprocessing\.split\[stratify\]", {"preprocessing": {"split": {"type": "stratify", "column": "output"}}}),
    ],
}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key.startswith("+"):
            out[key[1:]] = out.get(key[1:], []) + copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def common(model_type: str) -> dict[str, Case]:
    """Keys both model types share (trainer, split, sampling), by path."""
    plateau = PLATEAU[model_type]
    return {
    "trainer.train_steps": Case(2),
    "trainer.eval_batch_size": Case(2),
    "trainer.optimizer.type": Case("sgd"),
    "trainer.optimizer[adam].betas": Case((0.5, 0.9)),
    "trainer.optimizer[adam].eps": Case(0.1),
    "trainer.optimizer[rmsprop].eps": Case(0.1),
    "trainer.optimizer[adagrad].eps": Case(0.1),
    "trainer.optimizer[sgd].nesterov": Case(True, {"trainer": {"optimizer": {"type": "sgd", "momentum": 0.9}}}),
    "trainer.learning_rate_scheduler.decay_rate": Case(None, {"trainer": {"learning_rate_scheduler": {
        "decay": "exponential", "decay_steps": 2}}}),
    "trainer.learning_rate_scheduler.decay_steps": Case(2, {"trainer": {"learning_rate_scheduler": {"decay": "exponential"}}}),
    "trainer.learning_rate_scheduler.staircase": Case(True, {"trainer": {"learning_rate_scheduler": {
        "decay": "exponential", "decay_steps": 2}}}),
    # a plateau: a learning rate so large that the validation loss does not improve at every evaluation
    "trainer.learning_rate_scheduler.reduce_on_plateau": Case(1, _merge(plateau, {"trainer": {
        "learning_rate_scheduler": {"reduce_on_plateau_patience": 1}}})),
    "trainer.learning_rate_scheduler.reduce_on_plateau_patience": Case(1, _merge(plateau, {"trainer": {
        "learning_rate_scheduler": {"reduce_on_plateau": 3, "reduce_on_plateau_patience": 3}}})),
    "trainer.learning_rate_scheduler.reduce_on_plateau_rate": Case(0.5, _merge(plateau, {"trainer": {
        "learning_rate_scheduler": {"reduce_on_plateau": 3, "reduce_on_plateau_patience": 1}}})),
    "trainer.optimizer[adamax].betas": Case((0.5, 0.9)),
    "trainer.optimizer[nadam].betas": Case((0.5, 0.9)),
    "trainer.optimizer[radam].betas": Case((0.5, 0.9)),
    "trainer.optimizer[sgd].dampening": Case(0.5, {"trainer": {"optimizer": {"type": "sgd", "momentum": 0.9}}}),
    "trainer.learning_rate_scheduler.t_0": Case(2, {"trainer": {"learning_rate_scheduler": {"decay": "cosine"}}}),
    "trainer.learning_rate_scheduler.t_mult": Case(2, {"trainer": {"learning_rate_scheduler": {
        "decay": "cosine", "t_0": 2}}}),
    "trainer.learning_rate_scheduler.eta_min": Case(0.005, {"trainer": {"learning_rate_scheduler": {"decay": "cosine"}}}),
    # Ludwig's default listens to the training loss; the validation loss plateaus at other evaluations
    "trainer.learning_rate_scheduler.reduce_eval_split": Case("validation", _merge(plateau, {"trainer": {
        "learning_rate_scheduler": {"reduce_on_plateau": 3, "reduce_on_plateau_patience": 1}}})),
    "trainer.eval_steps": Case(1, {"trainer": {"eval_batch_size": 2}}),
    "trainer.max_batch_size": Case(32),  # caps the evaluation batch (64 rows at least, by default)
    "trainer.gradient_accumulation_steps": Case(2),
    "trainer.gradient_clipping.clipnorm": Case(0.001),
    "trainer.gradient_clipping.clipvalue": Case(0.0001),
    "trainer.gradient_clipping.clipglobalnorm": Case(0.01),
    "trainer.regularization_type": Case("l2", {"trainer": {"regularization_lambda": 0.1}}),
    "trainer.regularization_lambda": Case(0.1, {"trainer": {"regularization_type": "l2"}}),
    "trainer.early_stop": Case(1, plateau),
    "trainer.steps_per_checkpoint": Case(1),
    "trainer.checkpoints_per_epoch": Case(2),
    "preprocessing.split.type": Case("random"),
    "preprocessing.split[random].probabilities": Case((0.5, 0.25, 0.25)),
    "preprocessing.split[stratify].probabilities": Case((0.5, 0.25, 0.25)),
    "preprocessing.split[stratify].column": Case("split"),
    "preprocessing.split[fixed].column": Case("split2"),
    "preprocessing.sample_size": Case(20),
    }

# Adapter keys, relative to the adapter section (`adapter` for llm, `input_features[text].encoder[auto_transformer].adapter` for ECD).
MERGE = {"postprocessor": {"merge_adapter_into_base_model": True}}


def adapter_cases(targets: dict[str, list[str]], trained: str) -> dict[str, Case]:
    """`targets`: module names of the model to adapt (one layer, the ia3 layers, one to train in full); `trained`:
    where the context's default run left its adapter (for `pretrained_adapter_weights`)."""
    cases = {"type": Case("lora")}
    for kind in ("lora", "adalora", "adaption_prompt", "ia3", "loha", "lokr", "vera"):
        cases[f"[{kind}].pretrained_adapter_weights"] = Case(trained)  # prompt tuning's is refused (`REFUSED`)
    for kind in ("lora", "adalora", "ia3", "loha", "lokr", "vera"):  # prompt-style adapters cannot merge: `REFUSED`
        cases[f"[{kind}].postprocessor.progressbar"] = Case(True, {"@adapter": MERGE}, display=True)
    for kind in ("lora", "adalora", "loha", "lokr", "vera"):
        cases[f"[{kind}].target_modules"] = Case(targets["one"])
    cases.update({
        "[lora].alpha": Case(4),
        "[adalora].alpha": Case(4),
        "[adalora].total_step": Case(20),
        "[adalora].tinit": Case(1),
        "[adalora].tfinal": Case(1),
        "[adalora].target_r": Case(4),
        # importance smoothing: after 6 steps the pruned triplets are still the same ones; after 18 they differ
        "[adalora].beta1": Case(0.01, {"trainer": {"epochs": 6}}),
        "[adalora].beta2": Case(0.01, {"trainer": {"epochs": 6}}),
        "[ia3].target_modules": Case(targets["ia3"][:1], {"@adapter": {"feedforward_modules": None}}),
        "[ia3].feedforward_modules": Case(targets["ia3"][:1], {"@adapter": {"target_modules": targets["ia3"]}}),
        "[ia3].modules_to_save": Case(targets["save"]),
        "[vera].r": Case(4),
        "[prompt_tuning].prompt_tuning_init": Case("TEXT", {"@adapter": {"prompt_tuning_init_text": "a great movie"}}),
        "[prompt_tuning].prompt_tuning_init_text": Case("a dull film", {"@adapter": {"prompt_tuning_init": "TEXT",
                                                                                     "prompt_tuning_init_text": "a great movie"}}),
    })
    return cases


FC1 = {"num_fc_layers": 1}
# The keys of each encoder trained from scratch that its own code reads; the keys of a shared section (embedding,
# fully connected, convolution, recurrence) are run on one encoder: `shared_exempt` says which.
SCRATCH_CASES = {
    "embed": {"pretrained_embeddings": Case("@glove"), "fc_layers[].output_size": Case(8, scratch_text("embed", fc_layers=[{"output_size": 4}])),
              **{key: Case(None, scratch_text("embed", **FC1)) for key in ("output_size", "norm", "use_bias")}},
    "parallel_cnn": {},
    "stacked_cnn": {"conv_layers[].filter_size": Case(5, scratch_text("stacked_cnn", conv_layers=[{"filter_size": 3}])),
                    "num_conv_layers": Case(3), "pool_strides": Case(1)},
    "rnn": {"recurrent_dropout": Case(0.5, scratch_text("rnn", num_layers=2)),
            "unit_forget_bias": Case(False, scratch_text("rnn", cell_type="lstm")),
            **{key: Case(None, scratch_text("rnn", **FC1)) for key in ("fc_activation", "fc_dropout")}},
    "cnnrnn": {"pool_size": Case(4, scratch_text("cnnrnn", num_conv_layers=2))},
}
def with_sets(inputs: list | None = None, outputs: list | None = None) -> dict:
    """The base features plus these set features (in place of the prefix context's one)."""
    return {"input_features": [*BASE["ecd"]["input_features"], *(inputs or [])],
            "output_features": [*BASE["ecd"]["output_features"], *(outputs or [])]}


SET_CASES = {
    "input_features[set].name": Case("labels", with_sets([{**SET_INPUT, "column": "tags"}])),
    "input_features[set].column": Case("tags2"),
    "input_features[set].tied": Case("tags2", with_sets([SET_INPUT, {**SET_INPUT, "name": "tags2"}])),
    "input_features[set].encoder.pretrained_embeddings": Case("@glove"),
    "input_features[set].encoder.embedding_size": Case(2),  # at most the vocabulary (8 members here), as in Ludwig
    **{f"input_features[set].encoder.{key}": Case(None, with_sets([{**SET_INPUT, "encoder": FC1}]))
       for key in ("output_size", "activation")},
    "input_features[set].preprocessing.most_common": Case(2),
    "input_features[set].preprocessing.fill_value": Case("drama"),
    "output_features[set].name": Case("labels", with_sets(outputs=[{**SET_OUTPUT, "column": "tags"}])),
    "output_features[set].column": Case("tags2"),
    "output_features[set].loss.class_weights": Case({"keeper": 4.0}),
    "output_features[set].preprocessing.most_common": Case(2),
    "output_features[set].preprocessing.fill_value": Case("drama", with_sets(outputs=[
        {**SET_OUTPUT, "preprocessing": {"tokenizer": "comma", "missing_value_strategy": "fill_with_const"}}])),
    "input_features[text].encoder.type": Case(Whole({"type": "embed", "embedding_size": 4})),
    "input_features[text].preprocessing.tokenizer": Case("characters"),
    "input_features[text].preprocessing.pretrained_model_name_or_path": Case(
        "@bert", scratch_text("embed", {"tokenizer": "hf_tokenizer", "pretrained_model_name_or_path": "@llama"})),
    "input_features[text].preprocessing.vocab_file": Case("@vocab"),
    "input_features[text].preprocessing.most_common": Case(5),
    "input_features[text].preprocessing.padding_symbol": Case("[PAD]"),
    "input_features[text].preprocessing.unknown_symbol": Case("[UNK]"),
}
EMBEDDING = ("representation", "embedding_size", "embeddings_trainable", "pretrained_embeddings", "dropout")
FULLY_CONNECTED = ("num_fc_layers", "output_size", "norm", "use_bias", "fc_layers[].output_size")
PER_LAYER = ("activation", "dropout", "norm", "use_bias", "num_filters", "strides", "padding", "dilation_rate",
             "pool_function", "pool_size", "pool_strides", "pool_padding", "output_size")
CONVOLUTION = ("num_conv_layers", "num_filters", "filter_size", "pool_function", "pool_size", "activation",
               "conv_layers[].filter_size")
STRIDES = ("strides", "padding", "dilation_rate", "pool_strides", "pool_padding")
RECURRENCE = ("cell_type", "state_size", "bidirectional", "recurrent_dropout", "activation", "unit_forget_bias",
              "num_fc_layers", "fc_activation", "fc_dropout", "reduce_output")
# section keys → the encoder whose run shows them (they are one pydantic field read by one function for all)
# (the recurrence before the convolutions: cnnrnn's `activation` is its recurrence's, as in Ludwig)
SHARED = [(EMBEDDING, "embed", "encoders.sequence.TokenEmbedding"), (FULLY_CONNECTED, "embed", "fc_specs and dense_stack"),
          (RECURRENCE, "rnn", "encoders.rnn.Recurrence and encode"),
          (CONVOLUTION, "stacked_cnn", "conv_specs and encoders.sequence.ConvBlock"),
          (STRIDES, "stacked_cnn", "conv_specs and encoders.sequence.ConvBlock")]
SECTIONS = {"embed": (EMBEDDING, FULLY_CONNECTED), "parallel_cnn": (EMBEDDING, FULLY_CONNECTED, CONVOLUTION),
            "stacked_cnn": (EMBEDDING, FULLY_CONNECTED, CONVOLUTION, STRIDES),
            "rnn": (EMBEDDING, FULLY_CONNECTED, RECURRENCE),
            "cnnrnn": (EMBEDDING, FULLY_CONNECTED, RECURRENCE, CONVOLUTION, STRIDES), "set": (FULLY_CONNECTED,)}
OWN = {"cnnrnn": ("filter_size", "pool_size"), "rnn": ("num_fc_layers",), "set": ("num_fc_layers", "output_size")}


def shared_exempt(leaves) -> dict[str, str]:
    """Keys run on another member of the same shared section (`SHARED`), and per-layer keys (`conv_layers[].x`,
    `fc_layers[].x`), which override the encoder's key `x` in one merge (`conv_specs`, `fc_specs`): the merge is run
    through `conv_layers[].filter_size` and `fc_layers[].output_size`, each `x` through its encoder-level key."""
    out = {}
    for path in leaves:
        found = re.fullmatch(r"input_features\[(text|set)\]\.encoder(?:\[(\w+)\])?\.(.+)", path)
        if not found or found.group(2) == "auto_transformer":
            continue
        kind, key = found.group(2) or "set", found.group(3)
        layer = re.fullmatch(r"(conv|fc)_layers\[\]\.(\w+)", key)
        if layer and key not in ("conv_layers[].filter_size", "fc_layers[].output_size"):
            out[path] = (f"a per-layer key overrides the encoder's '{layer.group(2)}' in one merge "
                         f"({layer.group(1)}_specs), run through {layer.group(1)}_layers[].{'filter_size' if layer.group(1) == 'conv' else 'output_size'}")
            continue
        if key in OWN.get(kind, ()):
            continue
        for keys, home, code in SHARED:
            if key in keys and kind != home and keys in SECTIONS[kind]:
                out[path] = f"the same field as input_features[text].encoder[{home}].{key}, read by {code}: run there"
                break
    return out


ECD_ADAPTER = "input_features[text].encoder[auto_transformer].adapter"
ECD = {
    **common("ecd"),
    **{ECD_ADAPTER + (k if k.startswith("[") else "." + k): v for k, v in adapter_cases(
        {"one": ["query"], "ia3": ["key", "value", "output.dense"], "save": ["intermediate.dense"]}, "@default_run").items()},
    "input_features[text].name": Case("words", {"input_features": [{**BERT_TEXT, "column": "review"}]}),
    "input_features[text].column": Case("review2"),
    # frozen, two copies of one checkpoint are the same weights: tie encoders that train
    "input_features[text].tied": Case("review2", {"input_features": [
        *TRAINABLE["input_features"], {**TRAINABLE["input_features"][0], "name": "review2"}, *BASE["ecd"]["input_features"][1:]]}),
    "input_features[text].encoder[auto_transformer].pretrained_model_name_or_path": Case("@llama", {"input_features": [
        {**BERT_TEXT, "preprocessing": {"max_sequence_length": 16, "fill_value": "movie"}}]}),
    "input_features[text].encoder[auto_transformer].pretrained_kwargs": Case({"hidden_dropout_prob": 0.5}, TRAINABLE),
    "input_features[text].encoder[auto_transformer].trust_remote_code": None,  # EXEMPT below
    "input_features[text].encoder[auto_transformer].use_pretrained": Case(False),
    "input_features[text].encoder[auto_transformer].reduce_output": Case("max"),
    "input_features[text].preprocessing.max_sequence_length": Case(4),
    # BERT's tokenizer lowercases anyway: a case-sensitive (BPE) tokenizer shows the key
    "input_features[text].preprocessing.lowercase": Case(True, LLAMA_TEXT),
    "input_features[text].preprocessing.fill_value": Case("brilliant"),
    "input_features[text].preprocessing.cache_encoder_embeddings": Case(True),
    "input_features[text].preprocessing.missing_value_strategy": Case("fill_with_mode"),
    "input_features[category].name": Case("kind", {"input_features": [BERT_TEXT, {"name": "genre", "type": "category", "column": "genre"}]}),
    "input_features[category].column": Case("genre2"),
    "input_features[category].tied": Case("genre2", {"+input_features": [{"name": "genre2", "type": "category"}]}),
    "input_features[category].encoder.type": Case("onehot"),
    "input_features[category].preprocessing.most_common": Case(1),
    "input_features[category].preprocessing.fill_value": Case("comedy"),
    "input_features[number].name": Case("size", {"input_features": [BERT_TEXT, {"name": "length", "type": "number", "column": "length"}]}),
    "input_features[number].column": Case("length2"),
    # a passthrough encoder has no weights to share: tie dense ones
    "input_features[number].tied": Case("length2", {"input_features": [
        BERT_TEXT, {"name": "length", "type": "number", "encoder": "dense"},
        {"name": "length2", "type": "number", "encoder": "dense"}]}),
    "input_features[number].encoder.type": Case("dense"),
    "input_features[number].preprocessing.fill_value": Case(5.0),
    "input_features[binary].name": Case("switch", {"input_features": [BERT_TEXT, {"name": "flag", "type": "binary", "column": "flag"}]}),
    "input_features[binary].column": Case("flag2"),
    "input_features[binary].preprocessing.fallback_true_label": Case("cat"),
    "input_features[binary].preprocessing.missing_value_strategy": Case("bfill"),  # the mode may read false too
    "output_features[category].name": Case("mood", {"output_features": [
        {"name": "sentiment", "type": "category", "column": "sentiment"}]}),
    "output_features[category].column": Case("genre"),
    "output_features[category].loss.class_weights": Case({"positive": 4.0}),
    "output_features[category].top_k": Case(2),  # hits_at_k is reported for 1 < k < classes
    "output_features[category].preprocessing.most_common": Case(2),  # of 3 labels (one capitalised twice)
    "output_features[category].preprocessing.fill_value": Case("negative", {"output_features": [
        {"name": "sentiment", "type": "category", "preprocessing": {"missing_value_strategy": "fill_with_const"}}]}),
    "output_features[binary].name": Case("liked", {"output_features": [
        {"name": "recommended", "type": "binary", "column": "recommended"}]}),
    "output_features[binary].column": Case("flag"),
    "output_features[binary].loss.positive_class_weight": Case(4.0),
    "output_features[binary].threshold": Case(0.9),
    "output_features[binary].preprocessing.fallback_true_label": Case("cat", {"output_features": [
        {"name": "recommended", "type": "binary", "column": "flag"}]}),
    "output_features[binary].preprocessing.missing_value_strategy": Case("fill_with_false"),
    "output_features[number].name": Case("rating", {"output_features": [{"name": "score", "type": "number", "column": "score"}]}),
    "output_features[number].column": Case("length"),
    "output_features[number].clip": Case((0.0, 1.0)),
    "output_features[number].preprocessing.fill_value": Case(9.0, {"output_features": [
        {"name": "score", "type": "number", "preprocessing": {"missing_value_strategy": "fill_with_const"}}]}),
    "combiner.type": Case(Whole({"type": "comparator", "entity_1": ["review", "genre"], "entity_2": ["length", "flag"]})),
    "combiner[concat].norm_params": Case(GHOST, {"combiner": {"norm": "ghost"}}),
    "combiner[comparator].norm_params": Case(GHOST, {"combiner": {"norm": "ghost"}}),
    "combiner[concat].fc_layers[].norm_params": Case(GHOST, {"combiner": {"fc_layers": [{"output_size": 8, "norm": "ghost"}]}}),
    "combiner[comparator].fc_layers[].norm_params": Case(GHOST, {"combiner": {"fc_layers": [
        {"output_size": 8, "norm": "ghost"}]}}),
    "combiner[concat].fc_layers[].use_bias": Case(False),
    "combiner[comparator].fc_layers[].use_bias": Case(False),
    **{f"output_features[{kind}].decoder.{key}": case for kind in ("category", "binary", "number") for key, case in (
        ("fc_norm_params", Case(GHOST, {"output_features": [{"name": "sentiment", "type": "category", "decoder": {
            "num_fc_layers": 1, "fc_output_size": 8, "fc_norm": "ghost"}}, {"name": "score", "type": "number", "decoder": {
            "num_fc_layers": 1, "fc_output_size": 8, "fc_norm": "ghost"}}, {"name": "recommended", "type": "binary",
                                                                           "decoder": {"num_fc_layers": 1, "fc_output_size": 8, "fc_norm": "ghost"}}]})),
        ("fc_layers[].dropout", Case(0.5)), ("fc_layers[].activation", Case("tanh")), ("fc_layers[].use_bias", Case(False)),
        ("fc_layers[].norm_params", Case(GHOST, {"output_features": [
            {"name": "sentiment", "type": "category", "decoder": {"fc_layers": [{"output_size": 8, "norm": "ghost"}]}},
            {"name": "score", "type": "number", "decoder": {"fc_layers": [{"output_size": 8, "norm": "ghost"}]}},
            {"name": "recommended", "type": "binary", "decoder": {"fc_layers": [{"output_size": 8, "norm": "ghost"}]}}]})))},
    "trainer.layers_to_freeze_regex": Case(r"^heads\.sentiment\."),
    "trainer.learning_rate_scheduler.reduce_eval_metric": Case("accuracy", _merge(PLATEAU["ecd"], {"trainer": {
        "validation_field": "sentiment", "learning_rate_scheduler": {
            "reduce_on_plateau": 3, "reduce_on_plateau_patience": 1, "reduce_eval_split": "validation"}}})),
    "combiner[concat].fc_layers[].dropout": Case(0.5),
    "combiner[comparator].fc_layers[].dropout": Case(0.5),
    "combiner[concat].fc_layers[].activation": Case("tanh"),  # unset means the combiner's relu: tanh differs
    "combiner[comparator].fc_layers[].activation": Case("tanh"),
    "combiner[comparator].entity_1": Case(["genre", "review"]),
    "combiner[comparator].entity_2": Case(["flag", "length", "length2"]),
    "trainer.validation_field": Case("sentiment"),
    "trainer.validation_metric": Case("accuracy", {"trainer": {"validation_field": "sentiment"}}),
    "trainer.batch_size": Case(16),
    "trainer.group_by_length": Case(False),
    "trainer.enable_gradient_checkpointing": Case(True, TRAINABLE),
    "backend[local].cache_dir": Case("@tmp/cache"),
    **{f"input_features[text].encoder[{kind}].{key}": case for kind, cases in SCRATCH_CASES.items()
       for key, case in cases.items()},
    **SET_CASES,
}

LLM_ADAPTER = "adapter"
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
CHAT = {"input_features": [{"name": "messages", "type": "messages"}], "prompt": {"chat_template": CHAT_TEMPLATE}}
DPO, KTO = {"trainer": {"type": "dpo"}}, {"trainer": {"type": "kto"}}
NEVER = {"type": "regex", "value": "^x{50}$"}
ZERO_SHOT = {"trainer": {"type": "none"}}
SAMPLED = {"generation": {"do_sample": True, "temperature": 5.0, "top_k": 0}}
LLM = {
    **common("llm"),
    **{LLM_ADAPTER + (k if k.startswith("[") else "." + k): v for k, v in adapter_cases(
        {"one": ["q_proj"], "ia3": ["k_proj", "v_proj", "down_proj"], "save": ["lm_head"]}, "@default_run/model/adapter").items()},
    "base_model": Case("@gpt2"),
    # the tiny Llama has no biases to train: GPT-2 has
    "adapter[lora].bias_type": Case("all", {"base_model": "@gpt2"}),
    "adapter[adalora].bias_type": Case("all", {"base_model": "@gpt2"}),
    "pretrained_kwargs": Case({"attention_dropout": 0.5}),
    "input_features[text].column": Case("instruction2"),
    "input_features[text].preprocessing.max_sequence_length": Case(3),
    "input_features[messages].column": Case("messages2", CHAT),
    "prompt.chat_template": Case(CHAT_TEMPLATE.replace("\n", ": "), CHAT),
    "trainer.packing": Case(True),
    "trainer.packing_max_sequences_per_pack": Case(1, {"trainer": {"packing": True}}),
    "output_features[text].name": Case("answer", {"output_features": [{"name": "output", "type": "text", "column": "output"}]}),
    "output_features[text].column": Case("output2"),
    "output_features[text].preprocessing.max_sequence_length": Case(1),
    "output_features[category].name": Case("answer", {"output_features": [{"name": "output", "type": "category", "column": "output"}]}),
    "output_features[category].column": Case("output2"),
    "output_features[category].preprocessing.max_sequence_length": Case(1),
    # a pattern that never matches, against one that matches any generated text
    "output_features[category].decoder.match{}.type": Case("regex", {"output_features": [
        {"name": "output", "type": "category", "decoder": {"match": {"positive": {"type": "contains", "value": "."},
                                                                      "negative": NEVER}}}]}),
    "output_features[category].decoder.match{}.value": Case(".", {"output_features": [
        {"name": "output", "type": "category", "decoder": {"match": {"positive": NEVER, "negative": NEVER}}}]}),
    "output_features[category].preprocessing.fallback_label": Case("positive"),  # the default is the commoner, negative
    "prompt.template": Case("Review: {instruction}\nSentiment:"),
    "prompt.task": Case("Say whether the review is positive."),
    "generation.max_new_tokens": Case(8, {"trainer": {"type": "none"}}),  # fine-tuned, it stops at once
    "generation.min_new_tokens": Case(6, {"generation": {"max_new_tokens": 8}}),
    "generation.temperature": Case(5.0, {"generation": {"do_sample": True}}),
    "generation.top_k": Case(1, {"generation": {"do_sample": True, "temperature": 5.0}}),
    "generation.top_p": Case(0.01, {"generation": {"do_sample": True, "temperature": 5.0}}),
    "generation.num_beams": Case(4),
    "generation.repetition_penalty": Case(5.0, {"generation": {"max_new_tokens": 8}}),
    "generation.no_repeat_ngram_size": Case(1, {"generation": {"max_new_tokens": 8}}),
    "trainer.layers_to_freeze_regex": Case(r"embed_tokens"),
    "trainer.max_batch_size": Case(2, {"trainer": {"batch_size": "auto"}}),  # auto: 4 rows a step
    # at lr 1.0 both losses climb together; at 0.1 the batches' loss and the validation loss plateau apart
    "trainer.learning_rate_scheduler.reduce_eval_split": Case("validation", {"trainer": {
        "learning_rate": 0.1, "steps_per_checkpoint": 1, "epochs": 3, "learning_rate_scheduler": {"reduce_on_plateau": 3,
                                                                            "reduce_on_plateau_patience": 1}}}),
    # the base model (nothing trained: the fine-tuned one stops at once) writes its 4 tokens; each key changes them
    # half the vocabulary ends a beam, so beams finish early, where early stopping decides
    "generation.early_stopping": Case(True, _merge(ZERO_SHOT, {"generation": {
        "num_beams": 3, "max_new_tokens": 8, "eos_token_id": list(range(4, 200))}})),
    "generation.length_penalty": Case(-5.0, _merge(ZERO_SHOT, {"generation": {"num_beams": 3, "max_new_tokens": 8}})),
    "generation.max_time": Case(1e-6, ZERO_SHOT),  # out of time after the first token
    "generation.typical_p": Case(0.05, _merge(ZERO_SHOT, SAMPLED)),
    "generation.epsilon_cutoff": Case(0.02, _merge(ZERO_SHOT, SAMPLED)),
    "generation.eta_cutoff": Case(0.3, _merge(ZERO_SHOT, {"generation": {"do_sample": True, "temperature": 0.3,
                                                                          "top_k": 0}})),  # needs a peaked distribution
    "generation.encoder_repetition_penalty": Case(5.0, ZERO_SHOT),
    "generation.bad_words_ids": Case([[i] for i in range(4, 200)], ZERO_SHOT),
    "generation.suppress_tokens": Case(list(range(4, 200)), ZERO_SHOT),
    "generation.begin_suppress_tokens": Case(list(range(4, 400)), ZERO_SHOT),  # a special token first
    "generation.forced_eos_token_id": Case(5, ZERO_SHOT),
    "generation.exponential_decay_length_penalty": Case((1, 50.0), ZERO_SHOT),  # eos soon after the first token
    "generation.sequence_bias": Case({"5": 100.0}, ZERO_SHOT),
    "generation.guidance_scale": Case(3.0, ZERO_SHOT),
    "generation.eos_token_id": Case(list(range(4, 400)), ZERO_SHOT),  # any token ends the row
    "prompt.retrieval.type": Case("random", {"prompt": {"task": "Say the sentiment."}}),
    "prompt.retrieval.k": Case(2, {"prompt": {"task": "Say the sentiment.", "retrieval": {"type": "random"}}}),
    # two sentence encoders: the tiny BERT and the tiny Llama (mean-pooled, as sentence-transformers does)
    "prompt.retrieval.model_name": Case("@llama_padded", {"prompt": {"task": "Say the sentiment.", "retrieval": {
        "type": "semantic", "model_name": "@bert"}}}),
    "output_features[text].decoder.json_schema": Case({"type": "string", "enum": ["yes", "no"]}, ZERO_SHOT),
    "output_features[text].decoder.regex": Case("(yes|no)", ZERO_SHOT),
    "output_features[category].decoder.constrain_to_vocabulary": Case(True, {"generation": {"max_new_tokens": 8}}),
    "trainer.type": Case("none"),
    "trainer.validation_field": Case("output"),
    "trainer.validation_metric": Case("perplexity", {"trainer": {"validation_field": "output"}}),
    "trainer.batch_size": Case(16),
    "trainer.group_by_length": Case(False),
    "trainer.enable_gradient_checkpointing": Case(True),
    "preprocessing.global_max_sequence_length": Case(40),  # room for max_new_tokens 4 and a 32-token prompt
    "backend[local].cache_dir": Case("@tmp/cache"),
    # preference tuning: the output column is the chosen completion, `rejected` the rejected one, `label` KTO's
    "trainer.beta": Case(0.5, DPO),
    "trainer.dpo_beta": Case(0.5, DPO),
    "trainer.dpo_loss_type": Case("ipo", DPO),
    "trainer.dpo_label_smoothing": Case(0.2, DPO),
    "trainer.rejected_column": Case("rejected2", DPO),
    "trainer.orpo_beta": Case(0.5, {"trainer": {"type": "orpo"}}),
    "trainer.kto_beta": Case(0.5, KTO),
    "trainer.kto_desirable_weight": Case(3.0, KTO),
    "trainer.kto_undesirable_weight": Case(3.0, KTO),
    "trainer.label_column": Case("label2", KTO),
}
# peft's newer methods and LoRA's initialisations, shown on the causal LM (the ECD encoder builds the same peft
# configs: EXEMPT below). Sizes fit the tiny Llama: hidden 32, k/v projections 32 → 16.
NEWER = ("oft", "boft", "hra", "vblora", "fourierft", "waveft", "tinylora", "ln_tuning")
FITTED = {"vblora": {"num_vectors": 16, "vector_length": 16}, "fourierft": {"n_frequency": 64},
          "waveft": {"n_frequency": 64}}
PREFIX_CONTEXTS["llm"] += [(rf"adapter\[{kind}\]", {"adapter": {"type": kind, **sizes}}) for kind, sizes in FITTED.items()]
LLM.update({f"adapter[{kind}].pretrained_adapter_weights": Case("@default_run/model/adapter") for kind in NEWER})
LLM.update({f"adapter[{kind}].postprocessor.progressbar": Case(True, {"@adapter": MERGE}, display=True) for kind in NEWER})
LLM.update({f"adapter[{kind}].target_modules": Case(["q_proj"]) for kind in NEWER if kind != "ln_tuning"})
# the tiny Llama has no biases; GPT-2's Conv1D layers take only some of the methods: the others show it on BERT
CONV1D = ("vblora", "fourierft", "waveft", "tinylora")
LLM.update({f"adapter[{kind}].bias_type": Case("all", {"base_model": "@gpt2", "adapter": {"type": kind, **FITTED.get(
    kind, {}), "target_modules": ["c_attn"]}}) for kind in CONV1D})
ECD.update({f"{ECD_ADAPTER}[{kind}].bias_type": Case("all") for kind in ("oft", "boft", "hra")})
LLM.update({
    "adapter[ln_tuning].target_modules": Case(["norm"]),
    "adapter[oft].r": Case(2, {"@adapter": {"oft_block_size": 0, "r": 4}}),
    # with one 32-wide block per layer there is nothing to share: four blocks of 8
    "adapter[oft].block_share": Case(True, {"@adapter": {"oft_block_size": 8}}),
    "adapter[oft].oft_block_size": Case(16),
    "adapter[oft].eps": Case(1e-3, {"@adapter": {"coft": True}}),
    "adapter[boft].boft_block_size": Case(8),
    "adapter[boft].boft_block_num": Case(8, {"@adapter": {"boft_block_size": 0, "boft_block_num": 4}}),
    "adapter[hra].r": Case(4),
    "adapter[vblora].vector_length": Case(8),
    "adapter[vblora].num_vectors": Case(8),
    "adapter[vblora].topk": Case(1),
    "adapter[waveft].wavelet_family": Case("db2"),
    "adapter[lora].rank_pattern": Case({"q_proj": 2}),
    "adapter[lora].alpha_pattern": Case({"q_proj": 1.0}),
    "adapter[lora].eva_config.rho": Case(1.0, {"@adapter": {"init_lora_weights": "eva"}}),
    "adapter[lora].eva_config.use_label_mask": Case(False, {"@adapter": {"init_lora_weights": "eva"}}),
    "adapter[lora].eva_config.whiten": Case(True, {"@adapter": {"init_lora_weights": "eva"}}),
    "adapter[lora].corda_config.corda_method": Case("kpm", {"@adapter": {"init_lora_weights": "corda"}}),
})
CASES = {"ecd": {k: v for k, v in ECD.items() if v is not None}, "llm": LLM}

QUANTIZATION = ("quantization loads 4/8-bit weights with bitsandbytes, which needs a CUDA GPU; on a CPU the plan "
                "refuses the section (tests/test_llm.py)")
COMPILE = ("compiles the same computation: its effect is speed, and efficiency.json's seconds.compile "
           "(tests/test_trainer_keys.py); a compiled run costs seconds of compilation here")
RAY_EXEMPT = {
    "backend[ray].loader.fully_executed": "no valid alternative: only true is accepted (Ludwig's streaming loader "
    "is refused by name)",
    "backend[ray].cache_dir": "the same key as backend[local].cache_dir, whose case shows its effect; a Ray run "
    "would only add a cluster's start-up",
    "backend[ray].processor.parallelism": "how many Ray Data read tasks split a folder of files; by design the "
    "tables are the same whatever the number (rows are split by a hash of their content: tests/test_ray.py reads "
    "with 1 and 3 tasks)",
}
# The search section acts in `tunefork hyperopt` only (a train run ignores it): tests/test_hyperopt.py moves each of its
# keys and compares what Ray Tune is handed (test_every_search_key_changes_what_tune_is_given), and refuses `base`.
SEARCH_EXEMPT = {path: "acts in a search, not in a run: tests/test_hyperopt.py shows each key's effect on Ray Tune"
                 for path in LEAVES["ecd"] if path.startswith("hyperopt.")}
EXEMPT = {
    "ecd": {
        **SEARCH_EXEMPT,
        "input_features[text].encoder[auto_transformer].trust_remote_code": "runs code shipped in the model folder; the tiny models "
        "are built-in architectures with no code of their own, so there is nothing to run",
        **RAY_EXEMPT,
        "trainer.compile": COMPILE,
        **shared_exempt(LEAVES["ecd"]),
        **{path: "the same Decoder section and fc_stack as output_features[category].decoder: run there"
           for path in LEAVES["ecd"] if path.startswith("output_features[set].decoder.")},
    },
    "llm": {
        **SEARCH_EXEMPT,
        "trust_remote_code": "runs code shipped in the model folder; the tiny models are built-in architectures "
        "with no code of their own, so there is nothing to run",
        **RAY_EXEMPT,
        "trainer.compile": COMPILE,
        **{f"input_features[{kind}].name": "an identifier every feature has (Ludwig requires it); a causal LM's input "
           "has no weights or metadata of its own, and with `column` set the prompt reads the column"
           for kind in ("text", "messages")},
        "generation.use_cache": "reuses the keys and values of earlier positions: the same tokens, sooner "
        "(tests/test_llm_keys.py checks that the value reaches generate)",
        "generation.remove_invalid_values": "replaces nan / inf logits, which a working model never produces; "
        "tests/test_llm_keys.py checks that the value reaches generate",
        **{f"quantization.{k}": QUANTIZATION for k in ("bits", "llm_int8_threshold", "llm_int8_has_fp16_weight",
                                                       "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant",
                                                       "bnb_4bit_quant_type")},
    },
}
SAME_PEFT_CONFIG = ("the same section and peft config as the causal LM's adapter, whose case shows the key; on the "
                    "encoder each method trains, saves, loads and merges in tests/test_adapters.py")
NAMED = ("a named adapter is the same section as `adapter` (the active one is `adapter`, whose cases show each key); "
         "tests/test_peft_methods.py trains, saves and reloads named adapters")
LOFTQ = ("init_lora_weights: loftq quantizes with bitsandbytes on a CUDA GPU, and a CPU refuses it; "
         "tests/test_peft_methods.py runs it with loftq_iter 2 (peft's quantizer on a GPU, a stand-in on a CPU) "
         "and checks the value in the saved adapter's config")
EXEMPT["ecd"].update({
    **{f"input_features[text].encoder[auto_transformer].quantization.{k}": QUANTIZATION for k in (
        "bits", "llm_int8_threshold", "llm_int8_has_fp16_weight", "bnb_4bit_compute_dtype",
        "bnb_4bit_use_double_quant", "bnb_4bit_quant_type")},
})
EXEMPT["llm"].update({f"adapter[lora].loftq_config.{k}": LOFTQ for k in ("loftq_iter",)})
EXEMPT["llm"].update({k: NAMED for k in LEAVES["llm"] if k.startswith("adapters.")})
EXEMPT["llm"].update({f"adapter[{kind}].bias_type": "the tiny Llama has no biases and peft's " + kind + " takes no "
                      "GPT-2 Conv1D layer: the BERT encoder's case shows it" for kind in ("oft", "boft", "hra")})
EVA_RANKS = ("acts only when EVA moves rank between layers or stops reading batches early, which the tiny Llama's two "
             "layers on three batches of 8 rows do not make it do (tests/test_peft_methods.py checks that eva's start "
             "differs from the default one)")
EXEMPT["llm"].update({f"adapter[lora].eva_config.{k}": EVA_RANKS for k in ("tau", "adjust_scaling_factors")})
EXEMPT["ecd"].update({k: SAME_PEFT_CONFIG for k in LEAVES["ecd"] if k not in ECD and any(
    k.startswith(f"{ECD_ADAPTER}[{kind}]") for kind in NEWER) or k in (
    f"{ECD_ADAPTER}[lora].rank_pattern", f"{ECD_ADAPTER}[lora].alpha_pattern")})
EXEMPT["ecd"].update({f"{ECD_ADAPTER}[lora].loftq_config.{k}": LOFTQ for k in ("loftq_iter",)})
# The Ray backend's keys are plan-level: the plan records the cluster, workers, strategy, resources, restarts and
# checkpoint storage. Each is checked by resolving the plan against a cluster offering 8 CPUs and 2 GPUs, without
# starting one (the real Ray runs are in tests/test_ray.py).
RAY_PLAN_KEYS = {
    "backend.type": "ray",
    "backend[ray].trainer.strategy.type": "fsdp",
    "backend[ray].trainer.strategy[fsdp].reshard_after_forward": False,
    "backend[ray].trainer.strategy[fsdp].offload": (True, {"backend": {"type": "ray", "trainer": {"use_gpu": True}}}),
    "backend[ray].trainer.strategy[fsdp].pin_memory": (True, {"backend": {"type": "ray", "trainer": {
        "use_gpu": True, "strategy": {"type": "fsdp", "offload": True}}}}),
    "backend[ray].trainer.strategy[deepspeed].zero_optimization.stage": 3,
    "backend[ray].trainer.strategy[deepspeed].zero_optimization.offload_optimizer.device": (
        "none", {"backend": {"type": "ray", "trainer": {"use_gpu": True, "strategy": {
            "type": "deepspeed", "zero_optimization": {"offload_param": {"device": "none"}}}}}}),
    "backend[ray].trainer.strategy[deepspeed].zero_optimization.offload_optimizer.pin_memory": (
        True, {"backend": {"type": "ray", "trainer": {"use_gpu": True}}}),
    "backend[ray].trainer.strategy[deepspeed].zero_optimization.offload_param.device": (
        "none", {"backend": {"type": "ray", "trainer": {"use_gpu": True, "strategy": {
            "type": "deepspeed", "zero_optimization": {"offload_optimizer": {"device": "none"}}}}}}),
    "backend[ray].trainer.strategy[deepspeed].zero_optimization.offload_param.pin_memory": (
        True, {"backend": {"type": "ray", "trainer": {"use_gpu": True}}}),
    "backend[ray].trainer.num_workers": 1,
    "backend[ray].trainer.use_gpu": False,
    "backend[ray].trainer.resources_per_worker": {"CPU": 2},
    "backend[ray].trainer.max_failures": 0,
    "backend[ray].ray.address": "ray://head:10001",
    "backend[ray].ray.storage_path": "/shared/checkpoints",
    # × workers: with two Ray workers `linear` doubles the learning rate, `constant` keeps it
    "trainer.learning_rate_scaling": ("constant", {"backend": {"type": "ray", "trainer": {"num_workers": 2}}}),
}
# Off-default values a model type must refuse, with the ConfigError expected (the reason is part of it).
NOT_MERGEABLE = r"cannot be merged into the base model"
BINARY_TIED = {"+input_features": [{"name": "flag2", "type": "binary"}]}
NOT_MERGED = r"progressbar shows the merge's progress"
NO_CONV1D = r"fan_in_fan_out: this \w+ model has no Conv1D layers"
NO_CONTINUING = r"peft cannot train a saved prompt-tuning adapter further"


def _refused_adapter_keys(adapter: str) -> dict:
    return {
        f"{adapter}[adaption_prompt].postprocessor.merge_adapter_into_base_model": (True, NOT_MERGEABLE),
        f"{adapter}[prompt_tuning].postprocessor.merge_adapter_into_base_model": (True, NOT_MERGEABLE),
        f"{adapter}[adaption_prompt].postprocessor.progressbar": (True, NOT_MERGED),
        f"{adapter}[prompt_tuning].postprocessor.progressbar": (True, NOT_MERGED),
        f"{adapter}[ia3].fan_in_fan_out": (True, NO_CONV1D),
        f"{adapter}[prompt_tuning].pretrained_adapter_weights": ("saved/adapter", NO_CONTINUING),
    }


REFUSED = {
    "ecd": {**_refused_adapter_keys(ECD_ADAPTER),
            # eva and corda read training batches, which an encoder is built without
            **{f"{ECD_ADAPTER}[lora].{section}.{key}": (value, r"write pissa or olora instead",
                                                       {"@adapter": {"init_lora_weights": section.split("_")[0]}})
               for section, key, value in (("eva_config", "rho", 1.0), ("eva_config", "tau", 0.5),
                                           ("eva_config", "use_label_mask", False), ("eva_config", "whiten", True),
                                           ("eva_config", "adjust_scaling_factors", False),
                                           ("corda_config", "corda_method", "kpm"))},
            "input_features[binary].tied": ("flag2", r"has a passthrough encoder, which has none", BINARY_TIED)},
    "llm": {**_refused_adapter_keys("adapter"),
            "adapter[boft].boft_n_butterfly_factor": (2, r"butterfly factors above 1 with its CUDA extension only"),
            "trainer.learning_rate_scheduler.reduce_eval_metric": (
                "perplexity", r"perplexity is exp\(loss\)", {"trainer": {"validation_field": "output"}})},
}

# ------------------------------------------------------------------------------------- configs for a key

SEGMENT = re.compile(r"(\w+)(\[\w*\]|\{\})?")


def _segments(path: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in SEGMENT.finditer(path)]


def _descend(node: dict, name: str, brackets: str | None):
    """The dict at `name[brackets]` under `node`, created (with the union member's `type`) when absent."""
    value = node.get(name)
    if brackets in ("[]", "{}"):
        return value[0] if brackets == "[]" else next(iter(value.values()))
    if isinstance(value, list):
        tag = brackets[1:-1]
        return next(item for item in value if item.get("type") == tag)
    if isinstance(value, str):
        value = {"type": value}
    value = dict(value or {})
    if brackets and value.get("type", brackets[1:-1]) != brackets[1:-1]:
        value = {}  # another member's keys do not belong to this one
    if brackets:
        value["type"] = brackets[1:-1]
    node[name] = value
    return value


def _adapter_path(model_type: str) -> str:
    return ECD_ADAPTER if model_type == "ecd" else LLM_ADAPTER


def context_config(model_type: str, path: str, case: Case) -> dict:
    """The key's context: the base run, the prefix contexts, the case's own; every union on the path set to the
    member that holds the key (in the default run too)."""
    cfg = copy.deepcopy(BASE[model_type])
    for pattern, context in PREFIX_CONTEXTS[model_type]:
        if re.match(pattern, path):
            cfg = _merge(cfg, context)
    own = {k: v for k, v in case.context.items() if k != "@adapter"}
    cfg = _merge(cfg, own)
    node = cfg
    for name, brackets in _containers(model_type, path):
        node = _descend(node, name, brackets)
    if "@adapter" in case.context:  # overrides inside the adapter section, wherever it sits for this model type
        adapter = cfg
        for name, brackets in _segments(path):
            adapter = _descend(adapter, name, brackets)
            if name == "adapter":
                break
        adapter.update(copy.deepcopy(case.context["@adapter"]))
    return cfg


def _containers(model_type: str, path: str) -> list[tuple[str, str | None]]:
    """The sections on the way to a key. A union's `type` key stops above its section: the default run leaves the
    section out (an empty mapping would lack the `type` it needs)."""
    segments = _segments(path)[:-1]
    return segments[:-1] if LEAVES[model_type][path].annotation is None else segments


def changed_config(model_type: str, path: str, cfg: dict, value) -> dict:
    cfg = copy.deepcopy(cfg)
    node = cfg
    for name, brackets in _containers(model_type, path):
        node = _descend(node, name, brackets)
    segments = _segments(path)
    if isinstance(value, Whole):
        node[segments[-2][0]] = copy.deepcopy(value.section)
    elif LEAVES[model_type][path].annotation is None:  # a union's type: the section becomes that member
        section = node.get(segments[-2][0])
        node[segments[-2][0]] = {**(section if isinstance(section, dict) else {}), "type": value}
    else:
        node[segments[-1][0]] = copy.deepcopy(value)
    return cfg


def current_value(model_type: str, path: str, cfg: dict, leaf: Leaf):
    if leaf.annotation is None:
        return None
    node = cfg
    for name, brackets in _containers(model_type, path):
        node = _descend(copy.deepcopy(node), name, brackets)
    return node.get(_segments(path)[-1][0], leaf.default)


def off_default(leaf: Leaf, current):
    """A clearly different valid value, where one is obvious: None when the case must say."""
    members = [kind for _, kind in _members(leaf.annotation)] if leaf.annotation is not None else []
    for kind in members:
        if kind is bool:
            return not current
        if get_origin(kind) is Literal:
            others = [v for v in get_args(kind) if v != current and v is not None]
            if others:
                return others[0]
    if isinstance(current, bool) or current is None:
        return None
    if isinstance(current, int) and any(k is int or getattr(k, "__origin__", None) is int or
                                        (isinstance(k, type) and issubclass(k, int)) for k in members):
        return current * 2 if current else 1
    if isinstance(current, float):
        return current / 2 if current else 0.5
    return None


def planned_case(model_type: str, path: str):
    """(context config, changed config) for a key, or None when its value cannot be derived."""
    case = CASES[model_type].get(path, Case())
    cfg = context_config(model_type, path, case)
    value = case.value
    if value is None:
        value = off_default(LEAVES[model_type][path], current_value(model_type, path, cfg, LEAVES[model_type][path]))
    if value is None:
        return None
    return cfg, changed_config(model_type, path, cfg, value), case


# ------------------------------------------------------------------------------------------- data and runs


def ecd_frame() -> pd.DataFrame:
    frame, other = tiny.sentiment_frame(40, seed=0), tiny.sentiment_frame(40, seed=1)
    rng = np.random.default_rng(0)
    frame["review"] = frame["review"].str.capitalize()  # a case-sensitive tokenizer sees the case
    frame["review2"] = other["review"]
    frame["genre"] = rng.choice(["drama", "Drama", "comedy", "horror"], size=40)
    frame["genre2"] = other["genre"]
    frame["length2"] = other["length"]
    # neither reads as true or false by itself: which one is true is `fallback_true_label`'s question
    frame["flag"] = other["recommended"].map({"yes": "cat", "no": "dog"})
    frame["flag2"] = rng.choice(["cat", "dog"], size=40)
    frame.loc[[1, 5], "sentiment"] = frame.loc[[1, 5], "sentiment"].str.capitalize()  # `lowercase` merges them
    # a set per row (members as the genre's spellings, so `lowercase` merges two) and missing ones to fill or drop
    frame["tags"] = frame["genre"] + "," + other["recommended"].map({"yes": "keeper", "no": "skip"})
    frame["tags2"] = other["genre"] + "," + frame["recommended"].map({"yes": "keeper", "no": "skip"})
    frame.loc[[7, 15], "tags"] = None
    frame["split"] = [0] * 24 + [1] * 8 + [2] * 8
    frame["split2"] = [2] * 8 + [1] * 8 + [0] * 24
    frame = frame.astype(object)
    # missing values, what the missing-value keys act on; each output's in rows of its own, so that a row one output
    # fills is not dropped for another's missing label
    for column in ("review", "genre", "length", "flag"):
        frame.loc[[3, 11, 30], column] = None
    for rows, column in (([4, 12, 31], "sentiment"), ([5, 13, 32], "score"), ([6, 14, 33], "recommended")):
        frame.loc[rows, column] = None
    return frame


def llm_frame() -> pd.DataFrame:
    frame, other = tiny.sentiment_frame(40, seed=0), tiny.sentiment_frame(40, seed=1)
    opposite = {"positive": "negative", "negative": "positive"}

    def chats(questions, answers):
        return [json.dumps([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
                for q, a in zip(questions, answers, strict=True)]

    return pd.DataFrame({"instruction": frame["review"], "instruction2": other["review"],
                         "output": frame["sentiment"], "output2": other["genre"],
                         "messages": chats(frame["review"], frame["sentiment"]),
                         "messages2": chats(other["review"], other["genre"]),
                         "rejected": frame["sentiment"].map(opposite), "rejected2": frame["genre"],
                         "label": frame["recommended"] == "yes", "label2": other["recommended"] == "yes",
                         "split": [0] * 24 + [1] * 8 + [2] * 8, "split2": [2] * 8 + [1] * 8 + [0] * 24})


ECHOES = {"model_hyperparameters.json", "description.json", "resolved_config.yaml", "adapter_config.json"}
VOLATILE = {"efficiency.json", "report.html"}
VOLATILE_PLAN = {"memory_estimate_mb"}  # measured memory of this process


@dataclass
class Outcome:
    weights: dict
    metrics: dict
    plan: dict
    predictions: pd.DataFrame
    files: dict
    display: str
    run_dir: Path | None


def _fill(value, places: dict):
    if isinstance(value, str) and value.startswith("@"):
        head, _, tail = value.partition("/")
        if head not in places:
            return value
        return str(places[head]) + (f"/{tail}" if tail else "")
    if isinstance(value, dict):
        return {k: _fill(v, places) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_fill(v, places) for v in value]
    return value


def _files(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or relative.parts[0] == "envcache" or path.name in ECHOES | VOLATILE:
            continue
        out[str(relative)] = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    return out


def run(cfg: dict, frame: pd.DataFrame, folder: Path, places: dict) -> Outcome:
    import torch

    from tunefork import Model

    folder.mkdir(parents=True)
    cfg = _fill(cfg, {**places, "@tmp": folder})
    shown = io.StringIO()
    saved = os.environ.get("TUNEFORK_CACHE_DIR")
    os.environ["TUNEFORK_CACHE_DIR"] = str(folder / "envcache")  # a fresh cache each run: never a hit from another
    try:
        with contextlib.redirect_stderr(shown), contextlib.redirect_stdout(shown):
            model = Model(cfg, progress=False, quiet=True)
            result = model.train(frame, output_directory=folder / "runs", random_seed=7)
            torch.manual_seed(0)  # sampling generation draws from torch's generator
            predictions = model.predict(frame.head(4 if model.config.model_type == "llm" else 8))
    finally:
        if saved is None:
            os.environ.pop("TUNEFORK_CACHE_DIR")
        else:
            os.environ["TUNEFORK_CACHE_DIR"] = saved
    weights = {k: v.detach().cpu().clone() for k, v in model.model.state_dict().items()}
    plan = {k: v["value"] for k, v in result.plan.items() if k not in VOLATILE_PLAN}
    display = re.sub(r"\d+(\.\d+)?", "#", shown.getvalue())
    return Outcome(weights, json.loads(json.dumps(result.statistics)), json.loads(json.dumps(plan)), predictions,
                   _files(folder), display, result.output_directory)


def differences(a: Outcome, b: Outcome, display: bool = False) -> list[str]:
    import torch

    found = []
    if a.weights.keys() != b.weights.keys() or any(
            a.weights[k].shape != b.weights[k].shape or not torch.equal(a.weights[k], b.weights[k]) for k in a.weights):
        found.append("weights")
    if a.metrics != b.metrics:
        found.append("metrics")
    if a.plan != b.plan:
        found.append("plan")
    if not a.predictions.equals(b.predictions) or list(a.predictions.columns) != list(b.predictions.columns):
        found.append("predictions")
    if a.files != b.files:
        found.append("files")
    if display and a.display != b.display:
        found.append("display")
    return found


@pytest.fixture(scope="module")
def places(tiny_bert, tiny_llama, tiny_gpt2, tiny_llama_padded, tmp_path_factory) -> dict:
    files = tmp_path_factory.mktemp("files")
    (files / "glove.txt").write_text("movie 1 2 3\nfilm 3 2 1\ndrama 1 1 1\ncomedy 0 1 0\nkeeper 2 0 2\n")
    (files / "vocab.txt").write_text("movie\nfilm\ngreat\nawful\n")
    return {"@bert": tiny_bert, "@llama": tiny_llama, "@gpt2": tiny_gpt2, "@glove": files / "glove.txt",
            "@vocab": files / "vocab.txt", "@llama_padded": tiny_llama_padded}


@pytest.fixture(scope="module")
def frames() -> dict:
    return {"ecd": ecd_frame(), "llm": llm_frame()}


@pytest.fixture(scope="module")
def default_runs(places, frames, tmp_path_factory):
    """The default run of each distinct context, made once."""
    made: dict[str, Outcome] = {}

    def get(model_type: str, cfg: dict) -> Outcome:
        key = json.dumps(cfg, sort_keys=True, default=str)
        if key not in made:
            made[key] = run(cfg, frames[model_type], tmp_path_factory.mktemp("default") / "run", places)
        return made[key]

    return get


# --------------------------------------------------------------------------------------------------- tests


def _all_keys():
    return [(model_type, path) for model_type in ("ecd", "llm") for path in LEAVES[model_type]]


def test_every_key_is_covered_and_every_table_entry_exists():
    for model_type in ("ecd", "llm"):
        walked = set(LEAVES[model_type])
        tables = {"CASES": set(CASES[model_type]), "EXEMPT": set(EXEMPT[model_type]),
                  "REFUSED": set(REFUSED[model_type]),
                  "RAY_PLAN_KEYS": set(RAY_PLAN_KEYS)}
        for name, keys in tables.items():
            assert not keys - walked, f"{model_type} {name} names keys the schema does not have: {sorted(keys - walked)}"
        handled = tables["EXEMPT"] | tables["REFUSED"] | tables["RAY_PLAN_KEYS"]
        for a, b in (("CASES", "EXEMPT"), ("CASES", "REFUSED"), ("EXEMPT", "RAY_PLAN_KEYS"), ("CASES", "RAY_PLAN_KEYS")):
            assert not tables[a] & tables[b], f"{model_type}: in both {a} and {b}: {sorted(tables[a] & tables[b])}"
        missing = sorted(p for p in walked - handled if planned_case(model_type, p) is None)
        assert not missing, f"{model_type}: no case (and no derivable off-default value) for {missing}"
    assert len(LEAVES["ecd"]) > 200 and len(LEAVES["llm"]) > 140  # the walker reaches into unions and lists


@pytest.mark.parametrize("model_type", ["ecd", "llm"])
def test_two_default_runs_are_identical(model_type, places, frames, tmp_path):
    cfg = context_config(model_type, "trainer.epochs", Case())
    first = run(cfg, frames[model_type], tmp_path / "a", places)
    second = run(cfg, frames[model_type], tmp_path / "b", places)
    assert differences(first, second, display=True) == []
    assert first.weights and first.metrics["evaluations"] and len(first.predictions)


def ray_plan(cfg: dict, places: dict) -> dict:
    """The plan's values for `cfg`, with a cluster of 8 CPUs and 2 GPUs offering the workers."""
    from tunefork import config as config_mod
    from tunefork import hardware
    from tunefork import plan as plan_mod
    from tunefork.backends import cluster

    config = config_mod.load(_fill(cfg, places))
    text = {f.name: {"decoder_only": False} for f in config.input_features if config.model_type != "llm" and f.type == "text"}
    facts = plan_mod.DataFacts(training_rows=40, text_inputs=text, context_length=256)
    workers = (cluster.workers(config.backend, offered={"CPU": 8.0, "GPU": 2.0}) if config.backend.type == "ray"
               else plan_mod.LocalWorkers())
    return {k: v["value"] for k, v in plan_mod.resolve(config, facts, hardware.detect(), workers).to_dict().items()}


@pytest.mark.parametrize(("model_type", "path"), _all_keys(), ids=[f"{t}:{p}" for t, p in _all_keys()])
def test_key_has_an_effect(model_type, path, places, frames, default_runs, tmp_path):
    if path in RAY_PLAN_KEYS:
        value, context = RAY_PLAN_KEYS[path] if isinstance(RAY_PLAN_KEYS[path], tuple) else (RAY_PLAN_KEYS[path], {})
        cfg = context_config(model_type, path, Case(None, context))
        moved = changed_config(model_type, path, cfg, value)
        assert ray_plan(cfg, places) != ray_plan(moved, places), f"{path}: the plan is the same"
        return
    if path in EXEMPT[model_type]:
        pytest.skip(f"exempt: {EXEMPT[model_type][path]}")
    if path == "trainer.use_mixed_precision":
        from tunefork import hardware

        machine = hardware.detect()
        if machine.device != "cuda" and not machine.cpu_bf16:
            pytest.skip("this CPU has no native bf16: mixed precision stays fp32 here (the plan says why)")
    if path in REFUSED[model_type]:
        value, reason, *context = REFUSED[model_type][path]
        cfg = context_config(model_type, path, Case(None, context[0] if context else {}))
        with pytest.raises(ConfigError, match=reason):
            run(changed_config(model_type, path, cfg, value), frames[model_type], tmp_path / "changed", places)
        return
    cfg, changed, case = planned_case(model_type, path)
    default = default_runs(model_type, cfg)
    places = {**places, "@default_run": default.run_dir}
    moved = run(changed, frames[model_type], tmp_path / "changed", places)
    assert differences(default, moved, display=case.display), (
        f"{path}: moved off its default, nothing changed (weights, metrics, plan, predictions, files"
        f"{', display' if case.display else ''}); changed config: {_fill(changed, places)}")
