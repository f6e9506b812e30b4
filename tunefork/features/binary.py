"""Binary features: booleans, 0/1 or any two strings; outputs are a logit with a decision threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunefork.errors import DataError
from tunefork.features import metrics as m
from tunefork.features import unscored
from tunefork.features.category import label_strings

TRUE = {"true", "yes", "y", "1", "1.0", "t", "on", "positive"}
FALSE = {"false", "no", "n", "0", "0.0", "f", "off", "negative"}


def fit(values: pd.Series, feature, output: bool = False) -> dict:
    # A Python bool (a bool column, or a cell filled by fill_with_false) already is true or false: only the other
    # cells name the labels, so 'yes' / 'no' plus a filled False stays two values, not three.
    # Numerals are spelled one way (`category.label_strings`): 0, 0.0 and "0" are one value, not three.
    flags = values.map(lambda v: isinstance(v, (bool, np.bool_)))
    distinct = sorted(label_strings(values[~flags].dropna()).unique())
    if len(distinct) > 2:
        raise DataError(f"binary column '{feature.source}' has {len(distinct)} distinct values {distinct[:4]}; expected 2")
    standard = {v: v.lower() in TRUE for v in distinct}
    if all(v.lower() in TRUE | FALSE for v in distinct) and len(set(standard.values())) == len(distinct):
        str2bool = standard
    else:
        fallback = feature.preprocessing.fallback_true_label
        if fallback is not None and fallback not in distinct:
            raise DataError(f"binary column '{feature.source}': fallback_true_label '{fallback}' is not one of {distinct}")
        true_label = fallback or distinct[-1]
        str2bool = {v: v == true_label for v in distinct}
    labels = {True: "True", False: "False"}
    for value, flag in str2bool.items():
        labels[flag] = value
    if output and len({str2bool[v] for v in distinct} | set(values[flags].astype(bool))) < 2:
        raise DataError(f"binary output '{feature.source}' has one value in the training data; a classifier needs 2")
    return {"str2bool": str2bool, "labels": [labels[False], labels[True]], "canonical_numbers": True}


def transform(values: pd.Series, feature, meta: dict, output: bool = False) -> np.ndarray:
    text = label_strings(values, meta.get("canonical_numbers", False))
    mapped = text.map(meta["str2bool"]).astype(object)  # all-unmatched maps to float NaN, which refuses bools
    unknown = mapped.isna() & values.notna()
    if unknown.any():
        lowered = text[unknown].str.lower()
        mapped[unknown] = lowered.map(lambda v: True if v in TRUE else False if v in FALSE else None)
    if mapped.isna().any():
        example = values[mapped.isna()].iloc[0]
        raise DataError(f"binary column '{feature.source}': {example!r} is neither of {meta['labels']}")
    return mapped.astype(bool).to_numpy(dtype=np.float32)


def batch(column: np.ndarray, index: np.ndarray, meta: dict):
    import torch

    return torch.from_numpy(column[index])


def num_outputs(meta: dict) -> int:
    return 1


def loss(feature, meta: dict, logits, target):
    import torch.nn.functional as F

    weight = feature.loss.positive_class_weight
    pos_weight = logits.new_tensor([weight]) if weight is not None else None
    return F.binary_cross_entropy_with_logits(logits.squeeze(-1).float(), target, pos_weight=pos_weight)


def predict(feature, meta: dict, logits) -> dict[str, np.ndarray]:
    p = logits.squeeze(-1).float().sigmoid().cpu().numpy()
    # `finite` from the logit, not p: sigmoid(inf) is a finite 1.0, yet an infinite logit is an overflow
    return {"probabilities": np.stack([1 - p, p], axis=1), "predictions": p >= feature.threshold,
            "finite": unscored.finite_rows(logits)}


def metrics(feature, meta: dict, target: np.ndarray, out: dict) -> dict:
    y = target.astype(bool)
    matrix = m.confusion_matrix(y.astype(int), out["predictions"].astype(int), 2)
    return {
        "accuracy": m.accuracy(y, out["predictions"]),
        "macro_f1": m.macro_f1(matrix),
        "roc_auc": m.roc_auc(y, out["probabilities"][:, 1]),
        "confusion_matrix": matrix.tolist(),
    }


def columns(feature, meta: dict, out: dict) -> dict[str, np.ndarray]:
    """A row whose logit is NaN or infinite gets a null prediction and `<output>_error` (`features.unscored`)."""
    labels = np.asarray(meta["labels"], dtype=object)
    return unscored.mark(feature, out, {
        f"{feature.name}_predictions": labels[out["predictions"].astype(int)],
        f"{feature.name}_probabilities_{meta['labels'][0]}": out["probabilities"][:, 0],
        f"{feature.name}_probabilities_{meta['labels'][1]}": out["probabilities"][:, 1],
        f"{feature.name}_probability": out["probabilities"].max(1),
    })
