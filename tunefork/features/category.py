"""Category features. Inputs map unseen values to <UNK>; outputs are softmax classifiers over the training labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunefork.errors import DataError
from tunefork.features import metrics as m
from tunefork.features import unscored

UNK = "<UNK>"


def _strings(values: pd.Series, feature) -> pd.Series:
    out = values.astype(str).str.strip()
    return out.str.lower() if feature.preprocessing.lowercase else out


def fit(values: pd.Series, feature, output: bool = False) -> dict:
    counts = _strings(values, feature).value_counts(sort=True)
    # frequency order, ties broken by the value so the vocabulary never depends on row order
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: feature.preprocessing.most_common]
    classes = [value for value, _ in ordered]
    if output:
        if len(classes) < 2:
            raise DataError(f"category output '{feature.source}' has {len(classes)} class in the training data; a classifier needs at least 2")
        return {"vocab": classes, "counts": [int(c) for _, c in ordered]}
    return {"vocab": [UNK] + [c for c in classes if c != UNK]}


def transform(values: pd.Series, feature, meta: dict, output: bool = False) -> np.ndarray:
    index = {v: i for i, v in enumerate(meta["vocab"])}
    unknown = -1 if output else 0  # an output label never seen in training is not a class: it is scored as wrong
    return _strings(values, feature).map(index).fillna(unknown).astype(np.int64).to_numpy()


def batch(column: np.ndarray, index: np.ndarray, meta: dict):
    import torch

    return torch.from_numpy(column[index])


# -------------------------------------------------------------------------------------------------- as an output


def num_outputs(meta: dict) -> int:
    return len(meta["vocab"])


def class_weights(feature, meta: dict):
    weights = feature.loss.class_weights
    if weights is None:
        return None
    vocab = meta["vocab"]
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(vocab))
        if unknown:
            raise DataError(f"output '{feature.name}' loss.class_weights names unknown classes {unknown[:3]} (classes: {vocab[:10]})")
        return [float(weights.get(c, 1.0)) for c in vocab]
    if len(weights) != len(vocab):
        raise DataError(f"output '{feature.name}' loss.class_weights has {len(weights)} values for {len(vocab)} classes")
    return list(map(float, weights))


def loss(feature, meta: dict, logits, target):
    import torch.nn.functional as F

    weights = meta.get("class_weights")
    weight = logits.new_tensor(weights) if weights is not None else None
    return F.cross_entropy(logits, target, weight=weight, ignore_index=-1, label_smoothing=feature.loss.label_smoothing)


def predict(feature, meta: dict, logits) -> dict[str, np.ndarray]:
    """`finite`: rows whose logits are all finite; the others (an input overflowed the model) get no label."""
    probabilities = logits.float().softmax(-1).cpu().numpy()
    return {"probabilities": probabilities, "predictions": probabilities.argmax(-1), "finite": unscored.finite_rows(logits)}


def metrics(feature, meta: dict, target: np.ndarray, out: dict) -> dict:
    n = num_outputs(meta)
    matrix = m.confusion_matrix(target, out["predictions"], n)
    result = {
        "accuracy": m.accuracy(target, out["predictions"]),
        "macro_f1": m.macro_f1(matrix),
        "confusion_matrix": matrix.tolist(),
    }
    top_k = min(feature.top_k, n)
    if 1 < top_k < n:
        best = np.argsort(-out["probabilities"], axis=1)[:, :top_k]
        result["hits_at_k"] = float(np.mean((best == target[:, None]).any(1)))
    if n == 2:
        result["roc_auc"] = m.roc_auc(target == 1, out["probabilities"][:, 1])
    return result


def columns(feature, meta: dict, out: dict) -> dict[str, np.ndarray]:
    """A row whose scores are NaN or infinite is not labelled (argmax of NaN is class 0): its prediction is null
    and `<output>_error` says why (`features.unscored`)."""
    vocab = np.asarray(meta["vocab"], dtype=object)
    cols = {f"{feature.name}_predictions": vocab[out["predictions"]]}
    for i, label in enumerate(meta["vocab"]):
        cols[f"{feature.name}_probabilities_{label}"] = out["probabilities"][:, i]
    cols[f"{feature.name}_probability"] = out["probabilities"].max(1)
    return unscored.mark(feature, out, cols)
