"""Batch order and collation.

Training batches are shuffled, then (with `group_by_length`) rows of similar token length share a batch inside
windows of 50 batches — every row still appears once an epoch, but padding (pure waste on a CPU) mostly disappears.
Evaluation batches are fully length-sorted; outputs are put back in row order.
"""

from __future__ import annotations

import numpy as np

from tunefork.data.tensors import Embeddings, Table
from tunefork.features import INPUTS, OUTPUTS

WINDOW = 50


def lengths(table: Table, config) -> np.ndarray | None:
    """Tokens per row over the text inputs (cached embeddings keep their token lengths, so batches stay the same)."""
    text = [f.name for f in config.input_features if f.type == "text"]
    if not text:
        return None
    return np.sum([table[name].lengths for name in text], axis=0)


def training_order(n: int, batch_size: int, rng: np.random.Generator, shuffle: bool, by_length: np.ndarray | None):
    order = rng.permutation(n) if shuffle else np.arange(n)
    if by_length is not None:
        window = batch_size * WINDOW
        chunks = [order[i : i + window] for i in range(0, n, window)]
        order = np.concatenate([c[np.argsort(by_length[c], kind="stable")] for c in chunks])
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        # shuffle batch order again so each step does not see ever-longer rows within a window
        return [batches[i] for i in (rng.permutation(len(batches)) if shuffle else range(len(batches)))]
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def evaluation_order(n: int, batch_size: int, by_length: np.ndarray | None) -> list[np.ndarray]:
    order = np.argsort(by_length, kind="stable") if by_length is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def collate(table: Table, index: np.ndarray, config, meta: dict, with_targets: bool = True):
    """Tensors for rows `index`: inputs by feature name (text as ids + mask), targets by output name."""
    import torch

    inputs = {}
    for feature in config.input_features:
        column = table[feature.name]
        if isinstance(column, Embeddings):
            inputs[feature.name] = {"embedding": torch.from_numpy(column.vectors[index]), "tokens": int(column.lengths[index].sum())}
        else:
            inputs[feature.name] = INPUTS[feature.type].batch(column, index, meta["inputs"][feature.name])
    targets = {}
    if with_targets:
        for feature in config.output_features:
            targets[feature.name] = OUTPUTS[feature.type].batch(table[feature.name], index, meta["outputs"][feature.name])
    return inputs, targets


def token_count(inputs: dict) -> int:
    """Real (non-padding) tokens in a batch, for tokens/s — the same count whether text or cached vectors came in."""
    count = 0
    for x in inputs.values():
        if isinstance(x, dict):
            count += x["tokens"] if "tokens" in x else int(x["attention_mask"].sum())
    return count
