"""Rows an output could not score: their scores (logits) are NaN or infinite, so they get no prediction.

A forward pass turns NaN or infinite when an input is far outside what the model saw in training and overflows it
(a number like 1e30 through a first layer, in float32). Labelling such a row would report the argmax of NaN, which is
class 0, as the model's answer. Instead its prediction is null and `<output>_error` says why, in `predict`, `evaluate`
and `serve` alike (their JSON sends NaN as null). The column is added only when some row has no score, so the
columns of an ordinary prediction stay as they were.
"""

from __future__ import annotations

import numpy as np

REASON = "the model's scores for this row are not finite (e.g. an input too large for it); no prediction"


def finite_rows(logits) -> np.ndarray:
    """Per row (the first dimension): whether every logit is finite."""
    return logits.float().isfinite().reshape(len(logits), -1).all(-1).cpu().numpy()


def mark(feature, out: dict, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`cols` with the prediction of every unscored row set to null and an `<output>_error` column, when there are
    such rows; `out["finite"]` is `finite_rows` of the logits (absent: every row counts as scored)."""
    finite = out.get("finite")
    if finite is None or finite.all():
        return cols
    key = f"{feature.name}_predictions"
    predictions = cols[key].copy()
    predictions[~finite] = np.nan if predictions.dtype.kind == "f" else None  # a number column stays float
    return {**cols, key: predictions, f"{feature.name}_error": np.where(finite, None, REASON).astype(object)}
