"""Number features: z-score or min-max normalisation fitted on training; regression outputs report MAE/RMSE/R²."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunefork.errors import DataError
from tunefork.features import metrics as m
from tunefork.features import unscored


def _numbers(values: pd.Series, feature) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        example = values[bad].iloc[0]
        raise DataError(f"number column '{feature.source}': {example!r} is not a number (row {int(bad.idxmax())})")
    out = numbers.to_numpy(dtype=np.float64)
    if not np.isfinite(out).all():
        raise DataError(f"number column '{feature.source}': contains NaN or infinity (row {int(np.argmax(~np.isfinite(out)))})")
    return out


def fit(values: pd.Series, feature, output: bool = False) -> dict:
    x = _numbers(values, feature)
    meta = {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max())}
    meta["normalization"] = feature.preprocessing.normalization
    return meta


def _scale(meta: dict) -> tuple[float, float]:
    if meta["normalization"] == "zscore":
        return meta["mean"], meta["std"] if meta["std"] > 0 else 1.0
    if meta["normalization"] == "minmax":
        span = meta["max"] - meta["min"]
        return meta["min"], span if span > 0 else 1.0
    return 0.0, 1.0


def transform(values: pd.Series, feature, meta: dict, output: bool = False) -> np.ndarray:
    shift, scale = _scale(meta)
    return ((_numbers(values, feature) - shift) / scale).astype(np.float32)


def batch(column: np.ndarray, index: np.ndarray, meta: dict):
    import torch

    return torch.from_numpy(column[index])


def num_outputs(meta: dict) -> int:
    return 1


def loss(feature, meta: dict, logits, target):
    import torch.nn.functional as F

    prediction = logits.squeeze(-1).float()
    kind = feature.loss.type
    if kind == "mean_absolute_error":
        return F.l1_loss(prediction, target)
    if kind == "huber":
        return F.huber_loss(prediction, target)
    return F.mse_loss(prediction, target)


def predict(feature, meta: dict, logits) -> dict[str, np.ndarray]:
    shift, scale = _scale(meta)
    values = logits.squeeze(-1).float().cpu().numpy() * scale + shift
    if feature.clip is not None:
        values = np.clip(values, *feature.clip)  # an infinite value would become a bound here: `finite` keeps it
    return {"predictions": values, "finite": unscored.finite_rows(logits)}


def metrics(feature, meta: dict, target: np.ndarray, out: dict) -> dict:
    shift, scale = _scale(meta)
    return m.regression(target.astype(np.float64) * scale + shift, out["predictions"].astype(np.float64))


def columns(feature, meta: dict, out: dict) -> dict[str, np.ndarray]:
    """A row whose output is NaN or infinite (before any clip) gets a null prediction and `<output>_error`."""
    return unscored.mark(feature, out, {f"{feature.name}_predictions": out["predictions"]})
