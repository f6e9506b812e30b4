"""Metrics as plain numpy functions of (true, predicted): the same numbers for training, evaluate and reports."""

from __future__ import annotations

import numpy as np


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(y == pred)) if len(y) else float("nan")


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    keep = (y >= 0) & (y < n)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y[keep], pred[keep]), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    tp = np.diag(matrix).astype(float)
    precision = np.divide(tp, matrix.sum(0), out=np.zeros_like(tp), where=matrix.sum(0) > 0)
    recall = np.divide(tp, matrix.sum(1), out=np.zeros_like(tp), where=matrix.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    present = matrix.sum(1) > 0  # classes absent from the labels would only drag the mean to zero
    return float(f1[present].mean()) if present.any() else float("nan")


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann–Whitney U) identity; ties get average ranks."""
    y = np.asarray(y).astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=float)
    sorted_scores = np.asarray(score)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = pred - y
    mse = float(np.mean(err**2))
    variance = float(np.var(y))
    return {
        "mean_absolute_error": float(np.mean(np.abs(err))),
        "mean_squared_error": mse,
        "root_mean_squared_error": mse**0.5,
        "r2": 1.0 - mse / variance if variance > 0 else float("nan"),
    }
