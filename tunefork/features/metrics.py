"""Classification and regression metrics of (true, predicted) numpy arrays, computed by `torchmetrics`.

torchmetrics is what Ludwig reports with, so a number here means what it means there; these wrappers only turn numpy
into tensors, pick the task and averaging, and say NaN where a metric is undefined. The definitions (README, Metrics):

- accuracy: `multiclass_accuracy(average="micro")`, the share of rows predicted right. A target outside the label
  set (index -1) is a row no prediction can match: it counts as wrong here, and is left out of the confusion matrix.
- macro-F1: `multiclass_f1_score(average="macro")`: the unweighted mean of per-class F1 over the classes that occur
  in the labels or the predictions (torchmetrics drops a class with no true positive, false positive nor false
  negative, as scikit-learn's default does). A class that is predicted but never true therefore counts, as 0.
- ROC-AUC: `binary_auroc` with exact thresholds (the trapezoid under the full ROC curve, ties as one step). It is
  undefined with a single class present: NaN here, where torchmetrics would warn and return 0.
- hits@k: `multiclass_accuracy(top_k=k, average="micro")`, the share of rows whose label is among the k most probable.
- multi-label (set outputs), over (rows × labels) booleans: micro and macro F1, precision and recall from
  `multilabel_f1_score` / `multilabel_precision` / `multilabel_recall` (macro: the mean over every label, a label
  never true nor predicted counting 0, as torchmetrics' multilabel averaging does). `jaccard` is Ludwig's: per row
  |true ∩ predicted| / |true ∪ predicted|, averaged over rows, a row with both sets empty scoring 1. torchmetrics'
  `multilabel_jaccard_index` averages over labels (micro / macro) only, so the per-row mean is computed here.
- MAE, MSE, RMSE (`mean_squared_error(squared=False)`), R² (`r2_score`). R² is scale-free, but torchmetrics compares
  its sums of squares to 0 with an absolute tolerance of 1e-4 (on a target spread over 0–0.01 a poor fit can read
  R² 1, or 0) and forms the total sum as Σy² − (Σy)²/n, which cancels for large offsets; so both sides are first
  standardized by the target's mean and deviation, which leaves R² unchanged and makes the tolerance relative. R² of
  a constant target (or one row) is undefined: NaN here, where torchmetrics returns 0.

Everything runs in float64 where torchmetrics keeps the input's dtype; its ROC curve is float32 inside, so ROC-AUC is
exact to ~1e-7. torch and torchmetrics are imported in the function bodies (config validation must not load them).
"""

from __future__ import annotations

import numpy as np


def _long(values: np.ndarray):
    import torch

    return torch.as_tensor(np.asarray(values).astype(np.int64))


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    if not len(y):
        return float("nan")
    from torchmetrics.functional.classification import multiclass_accuracy

    # one index space for both sides, so booleans, -1 (an unseen label) and any integers are all plain classes
    values, index = np.unique(np.concatenate([np.asarray(y), np.asarray(pred)]), return_inverse=True)
    target, predicted = index[: len(y)], index[len(y) :]
    return float(multiclass_accuracy(_long(predicted), _long(target), num_classes=max(len(values), 2), average="micro"))


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Rows are true classes, columns predicted ones; rows whose target is outside 0..n-1 are left out."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    y, pred = np.asarray(y), np.asarray(pred)
    keep = (y >= 0) & (y < n)
    return multiclass_confusion_matrix(_long(pred[keep]), _long(y[keep]), num_classes=n).numpy().astype(np.int64)


def macro_f1(matrix: np.ndarray) -> float:
    """Macro-F1 of the rows a confusion matrix counts (the matrix is what every caller already has)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    if matrix.sum() == 0:
        return float("nan")
    from torchmetrics.functional.classification import multiclass_f1_score

    true, predicted = np.indices(matrix.shape).reshape(2, -1)
    counts = matrix.reshape(-1)
    target, pred = np.repeat(true, counts), np.repeat(predicted, counts)
    return float(multiclass_f1_score(_long(pred), _long(target), num_classes=max(len(matrix), 2), average="macro"))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")  # one class only (or no rows): no pair of a positive and a negative to rank
    import torch
    from torchmetrics.functional.classification import binary_auroc

    score = torch.as_tensor(np.array(score, dtype=np.float64))  # a copy: torch wants a writable array
    return float(binary_auroc(score, _long(y), thresholds=None))


def hits_at_k(y: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the k highest probabilities; a target outside the classes is a miss."""
    if not len(y):
        return float("nan")
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy

    y = np.asarray(y)
    n = probabilities.shape[1]
    keep = (y >= 0) & (y < n)
    if not keep.any():
        return 0.0
    scores = torch.as_tensor(np.asarray(probabilities, dtype=np.float64)[keep])
    hits = float(multiclass_accuracy(scores, _long(y[keep]), num_classes=n, top_k=k, average="micro"))
    return hits * keep.sum() / len(y)


def multilabel(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    names = ("jaccard", "micro_f1", "macro_f1", "micro_precision", "macro_precision", "micro_recall", "macro_recall")
    if not len(y):
        return dict.fromkeys(names, float("nan"))
    from torchmetrics.functional.classification import (
        multilabel_f1_score,
        multilabel_precision,
        multilabel_recall,
    )

    y, pred = np.asarray(y, dtype=bool), np.asarray(pred, dtype=bool)
    union = (y | pred).sum(1)
    jaccard = np.where(union > 0, (y & pred).sum(1) / np.maximum(union, 1), 1.0).mean()
    target, predicted, labels = _long(y), _long(pred), y.shape[1]
    result = {"jaccard": float(jaccard)}
    for name, fn in (("f1", multilabel_f1_score), ("precision", multilabel_precision), ("recall", multilabel_recall)):
        for average in ("micro", "macro"):
            result[f"{average}_{name}"] = float(fn(predicted, target, num_labels=labels, average=average))
    return result


def regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    if not len(y):
        return dict.fromkeys(("mean_absolute_error", "mean_squared_error", "root_mean_squared_error", "r2"), float("nan"))
    import torch
    from torchmetrics.functional.regression import mean_absolute_error, mean_squared_error, r2_score

    target = torch.as_tensor(np.asarray(y, dtype=np.float64))
    predicted = torch.as_tensor(np.asarray(pred, dtype=np.float64))
    center, spread = target.mean(), target.std() if len(y) > 1 else torch.tensor(0.0)
    constant = not bool(spread > 0)
    return {
        "mean_absolute_error": float(mean_absolute_error(predicted, target)),
        "mean_squared_error": float(mean_squared_error(predicted, target)),
        "root_mean_squared_error": float(mean_squared_error(predicted, target, squared=False)),
        "r2": float("nan") if constant else float(r2_score((predicted - center) / spread, (target - center) / spread)),
    }
