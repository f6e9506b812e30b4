"""Category features. Inputs map unseen values to <UNK>; outputs are softmax classifiers over the training labels.

Labels are strings, and numerals are spelled one way: `0`, `0.0`, `-0` and `"0"` (a JSONL column may hold all
four) are one class `0`, where `str()` alone made three. A numeral is a plain decimal without leading zeros
(`1.50`, `2e3`), so zero-padded codes such as `007` keep their spelling. Metadata fitted before this rule lacks
`canonical_numbers` and keeps reading strings as they are, so an older model folder predicts as it did.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal, InvalidOperation

import numpy as np
import pandas as pd

from tunefork.errors import DataError
from tunefork.features import metrics as m
from tunefork.features import unscored

UNK = "<UNK>"
NUMERAL = re.compile(r"[-+]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
log = logging.getLogger("tunefork.preprocess")


def _canonical(text: str) -> str:
    if len(text) > 64 or not NUMERAL.fullmatch(text):
        return text
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if number == number.to_integral_value() and abs(number.adjusted()) <= 30:  # int() of 1e999999 would not end
        return str(int(number))
    return str(number.normalize())


def label_strings(values: pd.Series, canonical: bool = True) -> pd.Series:
    """Each cell as its label string, stripped, numerals in one spelling (`canonical`); each distinct cell is
    spelled once, so a long column costs one pass of pandas' string methods."""
    text = values.astype(str).str.strip()
    if not canonical:
        return text
    spelling = {value: _canonical(value) for value in text.unique()}
    return text.map(spelling)


def _strings(values: pd.Series, feature, canonical: bool = True) -> pd.Series:
    out = label_strings(values, canonical)
    return out.str.lower() if feature.preprocessing.lowercase else out


def merged_spellings(values: pd.Series) -> dict[str, list[str]]:
    """label → the distinct spellings that became it, where there were several (`{"0": ["0", "0.0"]}`)."""
    raw = pd.Series(values.astype(str).str.strip().unique())
    groups = raw.groupby(raw.map(_canonical)).agg(list)
    return {label: sorted(spellings) for label, spellings in groups.items() if len(spellings) > 1}


def fit(values: pd.Series, feature, output: bool = False) -> dict:
    counts = _strings(values, feature).value_counts(sort=True)
    # frequency order, ties broken by the value so the vocabulary never depends on row order
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: feature.preprocessing.most_common]
    classes = [value for value, _ in ordered]
    merged = merged_spellings(values)
    if merged:
        shown = "; ".join(f"{', '.join(spellings)} → '{label}'" for label, spellings in list(merged.items())[:3])
        log.warning("%s '%s': numerically equal values read as one %s (%s)", "output" if output else "input",
                    feature.name, "class" if output else "value", shown)
    common = {"canonical_numbers": True, **({"merged": merged} if merged else {})}
    if output:
        if len(classes) < 2:
            raise DataError(f"category output '{feature.source}' has {len(classes)} class in the training data; a classifier needs at least 2")
        return {"vocab": classes, "counts": [int(c) for _, c in ordered], **common}
    return {"vocab": [UNK] + [c for c in classes if c != UNK], **common}


def transform(values: pd.Series, feature, meta: dict, output: bool = False) -> np.ndarray:
    index = {v: i for i, v in enumerate(meta["vocab"])}
    unknown = -1 if output else 0  # an output label that is not a class is left out of metrics and loss (-1)
    strings = _strings(values, feature, meta.get("canonical_numbers", False))
    return strings.map(index).fillna(unknown).astype(np.int64).to_numpy()


def unseen(values: pd.Series, feature, meta: dict) -> tuple[int, list[str]]:
    """How many cells are outside the vocabulary, and up to three of their distinct values (most frequent first).
    For an input these became <UNK>; for an output they are labels the model has no class for."""
    strings = _strings(values, feature, meta.get("canonical_numbers", False))
    outside = strings[~strings.isin(meta["vocab"])]
    return len(outside), outside.value_counts().index[:3].tolist()


def batch(column: np.ndarray, index: np.ndarray, meta: dict):
    import torch

    return torch.from_numpy(column[index])


# -------------------------------------------------------------------------------------------------- as an output


def num_outputs(meta: dict) -> int:
    return len(meta["vocab"])


def class_weights(feature, meta: dict, noun: str = "classes"):
    """`loss.class_weights` as one weight per class (a mapping names them; one left out weighs 1)."""
    weights, vocab = feature.loss.class_weights, meta["vocab"]
    if weights is None:
        return None
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(vocab))
        if unknown:
            raise DataError(f"output '{feature.name}' loss.class_weights names unknown {noun} {unknown[:3]} ({noun}: {vocab[:10]})")
        return [float(weights.get(c, 1.0)) for c in vocab]
    if len(weights) != len(vocab):
        raise DataError(f"output '{feature.name}' loss.class_weights has {len(weights)} values for {len(vocab)} {noun}")
    return list(map(float, weights))


def loss(feature, meta: dict, logits, target):
    import torch.nn.functional as F

    weights = meta.get("class_weights")
    weight = logits.new_tensor(weights) if weights is not None else None
    if not (target >= 0).any():  # every label outside the classes: nothing to learn from (a mean over none is NaN)
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits, target, weight=weight, ignore_index=-1, label_smoothing=feature.loss.label_smoothing)


def predict(feature, meta: dict, logits) -> dict[str, np.ndarray]:
    """`finite`: rows whose logits are all finite; the others (an input overflowed the model) get no label."""
    probabilities = logits.float().softmax(-1).cpu().numpy()
    return {"probabilities": probabilities, "predictions": probabilities.argmax(-1), "finite": unscored.finite_rows(logits)}


def metrics(feature, meta: dict, target: np.ndarray, out: dict) -> dict:
    """Accuracy, macro-F1, confusion matrix, hits@k and ROC-AUC over the same rows: those whose label is a class.
    A label the model has no class for (-1) is left out of all of them — counting it wrong in accuracy but nowhere
    in the matrix, and as class 0 in ROC-AUC, made the numbers disagree — and counted in `unseen_labels`."""
    n = num_outputs(meta)
    known = target >= 0
    target, predictions, probabilities = target[known], out["predictions"][known], out["probabilities"][known]
    matrix = m.confusion_matrix(target, predictions, n)
    result = {
        "accuracy": m.accuracy(target, predictions),
        "macro_f1": m.macro_f1(matrix),
        "confusion_matrix": matrix.tolist(),
    }
    top_k = min(feature.top_k, n)
    if 1 < top_k < n:
        result["hits_at_k"] = m.hits_at_k(target, probabilities, top_k)
    if n == 2:
        result["roc_auc"] = m.roc_auc(target == 1, probabilities[:, 1])
    if not known.all():
        result["unseen_labels"] = int((~known).sum())  # a number, so learning curves and history take it as is
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
