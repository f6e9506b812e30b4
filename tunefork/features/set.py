"""Set features (multi-label): a cell such as `"comedy drama"` is a set of members, split by `preprocessing.tokenizer`.

As an input, a set is its members' ids (`<PAD>` 0 and `<UNK>` 1 first; members outside `most_common` read as
`<UNK>`), summed by an embedding bag (`encoders.bag`). As an output, a set is one sigmoid per label — a multi-hot row
over the `most_common` labels of the training split, a member outside them left out — trained with
`BCEWithLogitsLoss` (`loss.class_weights` its `pos_weight`, as in Ludwig); a label is predicted when its probability
reaches `threshold`. Predictions follow Ludwig: `<f>_predictions` the list of labels predicted, `<f>_probabilities`
every label's probability, `<f>_probability` those of the labels predicted, and `<f>_probabilities_<label>` each.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunefork.data import glove
from tunefork.data.tensors import TokenIds
from tunefork.errors import DataError
from tunefork.features import category, tokens, unscored
from tunefork.features import metrics as m

PAD, UNK = "<PAD>", "<UNK>"


def _members(values: pd.Series, feature) -> pd.Series:
    split = tokens.RULES[feature.preprocessing.tokenizer]
    text = values.astype(str)
    if feature.preprocessing.lowercase:
        text = text.str.lower()
    return text.map(lambda cell: list(dict.fromkeys(split(cell))))


def fit(values: pd.Series, feature, output: bool = False) -> dict:
    ordered = tokens.most_common(_members(values, feature), feature.preprocessing.most_common)
    labels = [label for label, _ in ordered]
    if output:
        if not labels:
            raise DataError(f"set output '{feature.source}' has no label in the training data")
        return {"vocab": labels, "counts": [int(c) for _, c in ordered], "output": True}
    meta = {"vocab": [PAD, UNK] + [label for label in labels if label not in (PAD, UNK)]}
    encoder = feature.encoder
    if encoder.representation == "dense" and encoder.pretrained_embeddings:
        meta["embedding_size"] = glove.size(encoder.pretrained_embeddings,
                                            f"input feature '{feature.name}': encoder.pretrained_embeddings")
    return meta


def transform(values: pd.Series, feature, meta: dict, output: bool = False):
    """Inputs: each row's member ids (`TokenIds`). Outputs: a multi-hot uint8 matrix (rows × labels)."""
    index = {label: i for i, label in enumerate(meta["vocab"])}
    members = _members(values, feature)
    if output:
        hot = np.zeros((len(values), len(meta["vocab"])), dtype=np.uint8)
        for row, labels in enumerate(members):
            hot[row, [index[label] for label in labels if label in index]] = 1
        return hot
    return TokenIds.from_rows([sorted({index.get(member, 1) for member in row}) for row in members])


def unseen(values: pd.Series, feature, meta: dict) -> tuple[int, list[str]]:
    """Rows with a member outside the vocabulary, and up to three such members (most frequent first)."""
    known = set(meta["vocab"])
    outside = _members(values, feature).map(lambda row: [m for m in row if m not in known])
    counts = pd.Series([m for row in outside for m in row], dtype=object).value_counts()
    return int(outside.map(bool).sum()), counts.index[:3].tolist()


def batch(column, index: np.ndarray, meta: dict):
    import torch

    if meta.get("output"):
        return torch.from_numpy(column[index].astype(np.float32))
    ids, _ = column.padded(index, 0)
    return torch.from_numpy(ids if ids.shape[1] else np.zeros((len(index), 1), dtype=np.int64))


# -------------------------------------------------------------------------------------------------- as an output


def num_outputs(meta: dict) -> int:
    return len(meta["vocab"])


def class_weights(feature, meta: dict):
    """`loss.class_weights` as one weight per label, read as category reads them (each label's `pos_weight`)."""
    return category.class_weights(feature, meta, noun="labels")


def loss(feature, meta: dict, logits, target):
    import torch.nn.functional as F

    weights = meta.get("class_weights")
    pos_weight = logits.new_tensor(weights).float() if weights is not None else None
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pos_weight)


def predict(feature, meta: dict, logits) -> dict[str, np.ndarray]:
    probabilities = logits.float().sigmoid().cpu().numpy()
    return {"probabilities": probabilities, "predictions": probabilities >= feature.threshold,
            "finite": unscored.finite_rows(logits)}


def metrics(feature, meta: dict, target: np.ndarray, out: dict) -> dict:
    return m.multilabel(target.astype(bool), out["predictions"])


def _lists(rows) -> np.ndarray:
    column = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        column[i] = row
    return column


def columns(feature, meta: dict, out: dict) -> dict[str, np.ndarray]:
    vocab, name = meta["vocab"], feature.name
    predicted, probabilities = out["predictions"], out["probabilities"]
    cols = {
        f"{name}_predictions": _lists([[vocab[i] for i in np.flatnonzero(row)] for row in predicted]),
        f"{name}_probabilities": _lists([row.tolist() for row in probabilities]),
        f"{name}_probability": _lists([p[row].tolist() for p, row in zip(probabilities, predicted, strict=True)]),
    }
    for i, label in enumerate(vocab):
        cols[f"{name}_probabilities_{label}"] = probabilities[:, i]
    return unscored.mark(feature, out, cols)
