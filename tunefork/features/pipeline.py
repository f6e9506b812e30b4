"""Preprocessing: missing values → fit metadata on the training split → transform every split into a `Table`.

The result is cached on disk under a key covering the data's content, every preprocessing-relevant setting and
the tokenizer files, so a second run on the same inputs skips all of it and any change misses the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from tunefork.config.features import is_transformer
from tunefork.config.schema import Config
from tunefork.data import cache, read
from tunefork.data.tensors import Table
from tunefork.errors import DataError
from tunefork.features import INPUTS, OUTPUTS, category, missing, text

log = logging.getLogger("tunefork.preprocess")
CACHE_VERSION = 1


def check_columns(config: Config, frames: dict[str, pd.DataFrame], with_outputs: bool) -> None:
    features = [*config.input_features, *(config.output_features if with_outputs else [])]
    for split, frame in frames.items():
        for feature in features:
            if feature.source not in frame.columns:
                columns = ", ".join(map(str, frame.columns[:12]))
                raise DataError(
                    f"{frame.attrs.get('source', split)}: column '{feature.source}' (feature '{feature.name}') not found; "
                    f"columns are: {columns}"
                )


def tokenizers(config: Config) -> dict:
    return {f.name: text.load_tokenizer(f) for f in config.input_features if f.type == "text"}


def _fill(frame: pd.DataFrame, features, fills: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """Missing values filled per feature strategy; rows with a missing `drop_row` value removed. Returns the rows
    kept and their 0-based positions in `frame`."""
    frame = frame.copy()
    drop = pd.Series(False, index=frame.index)
    for feature in features:
        strategy = feature.preprocessing.missing_value_strategy
        values = frame[feature.source]
        if strategy == "drop_row":
            drop |= missing.is_missing(values)
        else:
            frame[feature.source] = missing.apply(values, strategy, fills.get(feature.name))
    if drop.any():
        log.info("%s: dropped %d rows with missing values", frame.attrs.get("source", "dataset"), int(drop.sum()))
    kept = frame[~drop]
    kept.attrs = frame.attrs
    return kept, np.flatnonzero(~drop.to_numpy())


def _naming_file(frame: pd.DataFrame, work):
    """Run `work`; a DataError it raises about a column is prefixed with the file the column came from."""
    try:
        return work()
    except DataError as exc:
        source = frame.attrs.get("source")
        if source and not str(exc).startswith(source):
            raise DataError(f"{source}: {exc}") from None
        raise


def fit(config: Config, training: pd.DataFrame, toks: dict) -> dict:
    """Feature metadata from the training split: vocabularies, normalisation statistics, tokenizer facts."""
    return _naming_file(training, lambda: _fit(config, training, toks))


def _fit(config: Config, training: pd.DataFrame, toks: dict) -> dict:
    meta: dict = {"inputs": {}, "outputs": {}, "fills": {}}
    features = [*config.input_features, *config.output_features]
    for feature in features:
        meta["fills"][feature.name] = missing.fit_fill_value(training[feature.source], feature.preprocessing, feature.type)
    for feature in config.output_features:  # before filling: a filled-in constant is not a label
        if missing.is_missing(training[feature.source]).all():
            raise DataError(f"{training.attrs.get('source', 'training data')}: output column '{feature.source}' is empty")
    training, _ = _fill(training, features, meta["fills"])
    if len(training) == 0:
        raise DataError(f"{training.attrs.get('source', 'training data')}: no rows left after dropping missing values")
    for feature in config.input_features:
        module = INPUTS[feature.type]
        values = training[feature.source]
        meta["inputs"][feature.name] = (
            module.fit(values, feature, toks[feature.name]) if feature.type == "text" else module.fit(values, feature)
        )
    for feature in config.input_features:
        if feature.tied is not None and feature.type != "number" and not is_transformer(feature):
            # one embedding table: the tied input reads its target's vocabulary (its own values outside it are <UNK>)
            meta["inputs"][feature.name] = meta["inputs"][feature.tied]
    for feature in config.output_features:
        fitted = OUTPUTS[feature.type].fit(training[feature.source], feature, output=True)
        if feature.type in ("category", "set"):
            fitted["class_weights"] = OUTPUTS[feature.type].class_weights(feature, fitted)
        meta["outputs"][feature.name] = fitted
    return meta


def transform(config: Config, frame: pd.DataFrame, meta: dict, toks: dict, with_outputs: bool = True,
              unseen_inputs: bool = True) -> Table:
    """The table's rows as tensors-to-be, with the fitted metadata; errors name the file and column.

    Values the training split never had are said in one warning line per feature: category inputs read as <UNK>
    (`unseen_inputs`; off for the training split itself, where they are only values outside `most_common`), and
    category labels outside the classes (always), which every metric and the loss leave out. The table carries
    those labels as `unseen_labels` ({output: {count, examples}}) for the evaluation's statistics."""
    return _naming_file(frame, lambda: _transform(config, frame, meta, toks, with_outputs, unseen_inputs))


def _warn_unseen(config: Config, frame: pd.DataFrame, meta: dict, with_outputs: bool, inputs: bool) -> dict:
    source = frame.attrs.get("source", "dataset")
    found = {}
    for feature in config.input_features if inputs else ():
        if feature.type == "category":
            count, examples = category.unseen(frame[feature.source], feature, meta["inputs"][feature.name])
            if count:
                log.warning("%s: input '%s': %d of %d rows have values not seen in training (e.g. %s); read as %s",
                            source, feature.name, count, len(frame), ", ".join(map(repr, examples)), category.UNK)
    for feature in config.output_features if with_outputs else ():
        if feature.type == "set":
            count, examples = OUTPUTS["set"].unseen(frame[feature.source], feature, meta["outputs"][feature.name])
            if count:
                log.warning("%s: output '%s': %d of %d rows have labels outside the %d kept (e.g. %s); those labels "
                            "are left out of the targets", source, feature.name, count, len(frame),
                            len(meta["outputs"][feature.name]["vocab"]), ", ".join(map(repr, examples)))
        if feature.type == "category":
            count, examples = category.unseen(frame[feature.source], feature, meta["outputs"][feature.name])
            if count:
                found[feature.name] = {"count": count, "examples": examples}
                log.warning("%s: output '%s': %d of %d rows have labels the model has no class for (e.g. %s); "
                            "left out of every metric and the loss", source, feature.name, count, len(frame),
                            ", ".join(map(repr, examples)))
    return found


def _transform(config: Config, frame: pd.DataFrame, meta: dict, toks: dict, with_outputs: bool,
               unseen_inputs: bool) -> Table:
    features = [*config.input_features, *(config.output_features if with_outputs else [])]
    frame, positions = _fill(frame, features, meta["fills"])
    unseen = _warn_unseen(config, frame, meta, with_outputs, unseen_inputs)
    columns = {}
    for feature in config.input_features:
        module, fitted = INPUTS[feature.type], meta["inputs"][feature.name]
        values = frame[feature.source]
        if feature.type == "text":
            columns[feature.name] = module.transform(values, feature, fitted, toks[feature.name])
        else:
            columns[feature.name] = module.transform(values, feature, fitted)
    if with_outputs:
        for feature in config.output_features:
            columns[feature.name] = OUTPUTS[feature.type].transform(
                frame[feature.source], feature, meta["outputs"][feature.name], output=True
            )
    table = Table(columns)
    table.row_index = frame.index  # rows dropped for missing values keep their original labels
    table.positions = positions  # ... and their 0-based positions in the table given, for a row key
    table.unseen_labels = unseen
    return table


def tokenizer_identity(tokenizer) -> str:
    """A digest of everything in the tokenizer that changes token ids: its class, vocabulary, padding and pipeline."""
    if hasattr(tokenizer, "identity"):  # a rule-based tokenizer (`features.tokens.Splitter`)
        return tokenizer.identity()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(tokenizer).__name__.encode())
    digest.update(json.dumps([tokenizer.padding_side, tokenizer.pad_token, tokenizer.model_max_length]).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer: its vocabulary is what it has
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
        return digest.hexdigest()
    # A fast tokenizer's serialisation holds its whole pipeline, vocabulary and added tokens, in a fixed order (a few
    # ms, where re-serialising the vocabulary took ~0.2 s). Truncation and padding are call-time state that tokenizing
    # sets as a side effect, not identity: cleared while serialising, then put back.
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        digest.update(backend.to_str().encode())
    finally:
        if truncation:
            backend.enable_truncation(**truncation)
        if padding:
            backend.enable_padding(**padding)
    return digest.hexdigest()


def _vectors_file(feature) -> list | None:
    """A GloVe file's path, size and time: fitting reads its vector size (`features.text`, `features.set`)."""
    path = getattr(getattr(feature, "encoder", None), "pretrained_embeddings", None)
    if path is None or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def cache_key(config: Config, fingerprints: dict[str, str], toks: dict, seed: int) -> str:
    return cache.key({
        "version": CACHE_VERSION,
        "data": fingerprints,
        "seed": seed,
        "split": config.preprocessing.model_dump(mode="json"),
        "features": [
            {"name": f.name, "type": f.type, "column": f.source, "preprocessing": f.preprocessing.model_dump(mode="json"),
             "loss": getattr(f, "loss", None) and f.loss.model_dump(mode="json"), "vectors": _vectors_file(f)}
            for f in (*config.input_features, *config.output_features)
        ],
        "tokenizers": {name: tokenizer_identity(tok) for name, tok in toks.items()},
    })


def preprocess(config: Config, splits: dict[str, pd.DataFrame], seed: int, cache_dir: Path | None, toks: dict):
    """Fit on `splits['training']`, transform every split; returns (metadata, {split: Table}, cache_hit)."""
    check_columns(config, splits, with_outputs=True)
    key = cache_key(config, {k: read.fingerprint(v) for k, v in splits.items()}, toks, seed)
    folder = cache_dir / "preprocessed" / key if cache_dir else None
    found = cache.load(folder, splits)
    if found is not None:
        log.info("preprocessed data loaded from the cache (%s)", folder)
        return *found, True
    meta = fit(config, splits["training"], toks)
    tables = {name: transform(config, frame, meta, toks, unseen_inputs=name != "training") for name, frame in splits.items()}
    cache.store(folder, meta, tables)
    return meta, tables, False
