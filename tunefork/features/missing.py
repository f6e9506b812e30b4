"""Ludwig's per-feature `missing_value_strategy`, fitted on the training split and applied to every split."""

from __future__ import annotations

import pandas as pd

from tunefork.errors import DataError


def is_missing(values: pd.Series) -> pd.Series:
    missing = values.isna()
    if values.dtype == object or pd.api.types.is_string_dtype(values):
        missing |= values.astype(str).str.strip().eq("") & ~values.isna()
    return missing


def fit_fill_value(values: pd.Series, preprocessing, kind: str):
    """The constant a missing cell becomes, computed on the training split (a plain JSON-able value)."""
    value = _fill_value(values, preprocessing, kind)
    return value.item() if hasattr(value, "item") else value


def _fill_value(values: pd.Series, preprocessing, kind: str):
    strategy = preprocessing.missing_value_strategy
    present = values[~is_missing(values)]
    if strategy == "fill_with_mode":
        return present.mode().iloc[0] if len(present) else getattr(preprocessing, "fill_value", None)
    if strategy == "fill_with_mean":
        if kind != "number":
            raise DataError(f"missing_value_strategy fill_with_mean needs a number feature, not {kind}")
        numbers = pd.to_numeric(present, errors="coerce")
        return float(numbers.mean()) if numbers.notna().any() else 0.0
    if strategy == "fill_with_false":
        return False
    if strategy == "fill_with_const":
        return getattr(preprocessing, "fill_value", None)
    return None  # drop_row, bfill and ffill need no constant


def apply(values: pd.Series, strategy: str, fill) -> pd.Series:
    """Fill the missing cells; for drop_row the caller removes rows where `is_missing` holds."""
    missing = is_missing(values)
    if not missing.any() or strategy == "drop_row":
        return values
    if strategy in ("bfill", "ffill"):
        out = values.mask(missing)
        # the edge the chosen direction cannot reach is filled from the other side
        return out.bfill().ffill() if strategy == "bfill" else out.ffill().bfill()
    out = values.astype(object).copy()
    out[missing] = fill
    return out
