"""`tunefork init-config`: a first config from a sample of the data — every column typed, leaks left out, reasons kept.

Types follow Ludwig's auto-config habits: two distinct values are binary; strings of several words, or mostly distinct
multi-word strings, are text; other strings are categories; numbers are numbers unless they are a handful of integer
codes. Columns that cannot help are left out and say why in the YAML's header: constants, identifiers (every value
distinct and no words to read), and columns that *determine the target* — TREC's `fine_label` maps each of its 50
values to exactly one coarse `label`, so a model given it would learn the lookup table, not the task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from tunefork.errors import DataError, TuneforkError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SAMPLE_ROWS = 10_000
TEXT_MIN_WORDS = 3.0  # a mean of this many words makes a column text
CATEGORY_MAX_CODES = 10  # integers with at most this many values are codes (a rating, a class id), not quantities
TARGET_MAX_CODES = 20
LEAK_PURITY = 0.99  # share of rows whose target is the majority target of their column value
SPLIT_NAMES = {"0", "1", "2", "train", "training", "validation", "val", "dev", "test"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str | None  # None: left out
    reason: str


def _words(values: pd.Series) -> pd.Series:
    return values.astype(str).str.split().str.len()


def _is_integer(values: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(values) or bool(
        pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all()
    )


def infer_column(values: pd.Series) -> Column:
    """The input feature type of one column (or why it is left out), from its values alone."""
    name = str(values.name)
    present = values.dropna()
    distinct = present.nunique()
    if distinct <= 1:
        return Column(name, None, "left out: one value only")
    share = distinct / max(1, len(present))
    if pd.api.types.is_bool_dtype(values) or distinct == 2:
        return Column(name, "binary", f"2 values ({', '.join(map(str, sorted(present.unique(), key=str)))})")
    if pd.api.types.is_numeric_dtype(values):
        if _is_integer(values) and distinct == len(present) and present.is_monotonic_increasing:
            return Column(name, None, "left out: a row counter (every value distinct, in order)")
        if _is_integer(values) and distinct <= CATEGORY_MAX_CODES:
            return Column(name, "category", f"{distinct} integer codes")
        return Column(name, "number", f"numbers from {present.min():g} to {present.max():g}, {distinct} distinct")
    words = _words(present)
    mean = float(words.mean())
    if mean >= TEXT_MIN_WORDS or (share > 0.5 and mean >= 1.5):
        return Column(name, "text", f"mean {mean:.1f} words, {share:.0%} distinct")
    if share > 0.5:
        return Column(name, None, f"left out: an identifier ({share:.0%} distinct, {mean:.1f} words each)")
    return Column(name, "category", f"{distinct} values, mean {mean:.1f} words")


def infer_target(values: pd.Series) -> Column:
    name = str(values.name)
    present = values.dropna()
    distinct = present.nunique()
    if distinct < 2:
        raise DataError(f"target column '{name}' has {distinct} distinct value(s); there is nothing to learn")
    if distinct == 2:
        return Column(name, "binary", f"target, 2 values ({', '.join(map(str, sorted(present.unique(), key=str)))})")
    if pd.api.types.is_numeric_dtype(values):
        if _is_integer(values) and distinct <= TARGET_MAX_CODES:
            return Column(name, "category", f"target, {distinct} integer classes")
        return Column(name, "number", f"target, numbers from {present.min():g} to {present.max():g}")
    if float(_words(present).mean()) >= TEXT_MIN_WORDS:
        raise DataError(f"target column '{name}' holds free text; tunefork predicts category, binary or number outputs")
    return Column(name, "category", f"target, {distinct} classes")


def determines_target(column: pd.Series, target: pd.Series, target_type: str) -> str | None:
    """Why `column` gives the target away, or None: each of its values maps to (nearly) one target value."""
    rows = column.notna() & target.notna()
    x, y = column[rows].astype(str), target[rows]
    if x.nunique() < 2 or x.nunique() > 0.5 * len(x):  # too few values to tell; near-unique ones are identifiers
        return None
    if target_type == "number":
        y = pd.to_numeric(y, errors="coerce")
        variance = float(y.var())
        explained = 1 - float((y - y.groupby(x).transform("mean")).var()) / variance if variance > 0 else 0.0
        if explained >= LEAK_PURITY:
            return f"its values explain {explained:.1%} of the target's variance"
        return None
    y = y.astype(str)
    if x.nunique() < y.nunique():
        return None  # coarser than the target: cannot determine it
    majority = y.groupby(x).agg(lambda s: s.value_counts().iloc[0]).sum()
    purity = majority / len(y)
    if purity >= LEAK_PURITY:
        return f"each of its {x.nunique()} values maps to one '{target.name}' ({purity:.1%} of rows): a finer version of the target"
    return None


def _split_column(frame: pd.DataFrame) -> str | None:
    if "split" not in frame.columns:
        return None
    values = set(frame["split"].dropna().astype(str).str.strip().str.lower())
    return "split" if values and values <= SPLIT_NAMES else None


def _max_length(values: pd.Series) -> int:
    # ~1.3 subword tokens per English word plus the special tokens, rounded up to a multiple of 16; the tokenizer is
    # not loaded here (the default model may be a hub id out of reach), so this errs long
    p99 = float(_words(values.dropna()).quantile(0.99))
    return int(min(512, max(32, 16 * math.ceil((p99 * 1.5 + 2) / 16))))


def infer(frame: pd.DataFrame, target: str, model: str = DEFAULT_MODEL) -> tuple[dict, list[Column]]:
    """(config dict, one Column per dataset column) for predicting `target` from the other columns."""
    if target not in frame.columns:
        raise DataError(f"{frame.attrs.get('source', 'dataset')}: target column '{target}' not found; "
                        f"columns are: {', '.join(map(str, frame.columns[:12]))}")
    out = infer_target(frame[target])
    columns, inputs = [out], []
    split = _split_column(frame)
    for name in frame.columns:
        if name == target:
            continue
        if name == split:
            columns.append(Column(name, None, "used as the fixed train/validation/test split"))
            continue
        column = infer_column(frame[name])
        if column.type in ("category", "binary", "number"):
            leak = determines_target(frame[name], frame[target], out.type)
            if leak:
                column = Column(name, None, f"left out: determines '{target}' — {leak}, which would leak the answer")
        columns.append(column)
        if column.type is None:
            continue
        feature: dict = {"name": str(name), "type": column.type}
        if column.type == "text":
            feature["encoder"] = {"type": "auto_transformer", "pretrained_model_name_or_path": model, "trainable": False}
            # frozen encoder: its pooled vectors are computed once and cached, so each epoch only trains the head
            feature["preprocessing"] = {"max_sequence_length": _max_length(frame[name]), "cache_encoder_embeddings": True}
        inputs.append(feature)
    if not inputs:
        raise DataError(f"no usable input column besides '{target}': {'; '.join(f'{c.name}: {c.reason}' for c in columns[1:])}")
    config = {
        "input_features": inputs,
        "output_features": [{"name": str(target), "type": out.type}],
        "trainer": {
            "epochs": 10,
            "validation_field": str(target),
            "validation_metric": "loss" if out.type == "number" else "accuracy",
        },
    }
    if split:
        config["preprocessing"] = {"split": {"type": "fixed", "column": split}}
    return config, columns


def render(config: dict, columns: list[Column], dataset: str, rows: int, sampled: int) -> str:
    import yaml

    width = max(len(c.name) for c in columns)
    lines = [
        f"# Written by `tunefork init-config` from {sampled:,} of {rows:,} rows of {dataset}. Train it with:",
        f"#   tunefork train --config <this file> --dataset {dataset}",
        "# Columns and the type each was given (edit freely; `tunefork check-config` validates):",
        *(f"#   {c.name:<{width}}  {c.type or '—':<8}  {c.reason}" for c in columns),
        "# Text encoders are frozen (Ludwig's default); set trainable: true to fine-tune, which is slower and better.",
    ]
    return "\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def init_config(dataset, target: str, model: str | None = None, output=None, seed: int = 0) -> str:
    """Infer a config for `dataset`, validate it, and write it to `output` (returned as text too)."""
    from pathlib import Path

    from tunefork import config as config_mod
    from tunefork.data import read

    frame = read.read(dataset)
    sample = frame.sample(n=SAMPLE_ROWS, random_state=seed) if len(frame) > SAMPLE_ROWS else frame
    sample.attrs = frame.attrs
    config, columns = infer(sample, target, model or DEFAULT_MODEL)
    try:
        config_mod.load(config)
    except TuneforkError as exc:  # a bug here, not a user mistake: say so instead of writing a broken file
        raise TuneforkError(f"the inferred config does not validate ({exc}); please report this dataset's columns") from None
    text = render(config, columns, str(dataset), len(frame), len(sample))
    if output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return text
