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


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _overflow(feature, x: np.ndarray, why: str) -> DataError:
    largest = float(np.max(np.abs(x)))
    return DataError(f"number column '{feature.source}': values as large as {largest:.3g} overflow {why}; rescale "
                     f"the column (other units, or a log) so its values and their spread stay well within ±1e38")


def fit(values: pd.Series, feature, output: bool = False) -> dict:
    """Normalisation statistics. Near 1e300 the variance (or a min-max span) overflows float64, which would make
    every scaled value 0: a statistic that overflows is stored as null, and refused if the normalization needs it;
    so is a column whose scaled values overflow the float32 the model reads."""
    x = _numbers(values, feature)
    with np.errstate(over="ignore", invalid="ignore"):
        stats = {"mean": x.mean(), "std": x.std(), "min": x.min(), "max": x.max()}
    meta = {k: float(v) if np.isfinite(v) else None for k, v in stats.items()}
    meta["normalization"] = feature.preprocessing.normalization
    _scaled(x, feature, meta)
    return meta


NEEDS = {"zscore": ("mean", "std"), "minmax": ("min", "max")}


def _scale(meta: dict) -> tuple[float, float]:
    if meta["normalization"] == "zscore":
        return meta["mean"], meta["std"] if meta["std"] > 0 else 1.0
    if meta["normalization"] == "minmax":
        span = meta["max"] - meta["min"]
        return meta["min"], span if span > 0 else 1.0
    return 0.0, 1.0


def _scaled(x: np.ndarray, feature, meta: dict) -> np.ndarray:
    """(x - shift) / scale as float32, or a DataError when any step overflows (even a min-max span can)."""
    needed = [meta[k] for k in NEEDS.get(meta["normalization"], ())]
    if any(v is None for v in needed) or not np.isfinite(_scale(meta)[1]):
        raise _overflow(feature, x, f"float64 while computing its {meta['normalization']} statistics")
    shift, scale = _scale(meta)
    with np.errstate(over="ignore", invalid="ignore"):
        out = (x - shift) / scale
    if not np.isfinite(out).all() or np.abs(out).max(initial=0.0) > FLOAT32_MAX:
        raise _overflow(feature, x, f"float32 after {meta['normalization'] or 'no'} normalization")
    return out.astype(np.float32)


def transform(values: pd.Series, feature, meta: dict, output: bool = False) -> np.ndarray:
    return _scaled(_numbers(values, feature), feature, meta)


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
    values = logits.squeeze(-1).float().cpu().numpy().astype(np.float64) * scale + shift  # float32 would overflow past 3e38
    if feature.clip is not None:
        values = np.clip(values, *feature.clip)  # an infinite value would become a bound here: `finite` keeps it
    return {"predictions": values, "finite": unscored.finite_rows(logits)}


def metrics(feature, meta: dict, target: np.ndarray, out: dict) -> dict:
    shift, scale = _scale(meta)
    return m.regression(target.astype(np.float64) * scale + shift, out["predictions"].astype(np.float64))


def columns(feature, meta: dict, out: dict) -> dict[str, np.ndarray]:
    """A row whose output is NaN or infinite (before any clip) gets a null prediction and `<output>_error`."""
    return unscored.mark(feature, out, {f"{feature.name}_predictions": out["predictions"]})
