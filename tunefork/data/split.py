"""Split one table into training / validation / test the way Ludwig does (random, fixed column, stratified)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunefork.config.schema import FixedSplit, RandomSplit, StratifySplit
from tunefork.errors import DataError

SPLITS = ("training", "validation", "test")
FIXED_NAMES = {"0": 0, "1": 1, "2": 2, "train": 0, "training": 0, "validation": 1, "val": 1, "dev": 1, "test": 2}


def _random_assign(n: int, probabilities, rng: np.random.Generator) -> np.ndarray:
    # Exact counts (not a per-row draw) so small datasets still get the proportions asked for.
    counts = np.floor(np.asarray(probabilities) * n).astype(int)
    counts[0] += n - counts.sum()
    labels = np.repeat(np.arange(3), counts)
    return rng.permutation(labels)


def assign(frame: pd.DataFrame, split, seed: int) -> np.ndarray:
    """Return an array of 0/1/2 (training/validation/test) per row."""
    rng = np.random.default_rng(seed)
    if isinstance(split, FixedSplit):
        if split.column not in frame.columns:
            raise DataError(f"{frame.attrs.get('source', 'dataset')}: split column '{split.column}' not found")
        values = frame[split.column].astype(str).str.strip().str.lower()
        bad = sorted(set(values) - set(FIXED_NAMES))
        if bad:
            raise DataError(
                f"{frame.attrs.get('source', 'dataset')}: column '{split.column}' has split values {bad[:3]}; "
                "use 0/1/2 or train/validation/test"
            )
        return values.map(FIXED_NAMES).to_numpy()
    if isinstance(split, StratifySplit):
        if split.column not in frame.columns:
            raise DataError(f"{frame.attrs.get('source', 'dataset')}: stratify column '{split.column}' not found")
        out = np.zeros(len(frame), dtype=int)
        for _, index in frame.groupby(split.column, sort=True, dropna=False).indices.items():
            out[index] = _random_assign(len(index), split.probabilities, rng)
        return out
    assert isinstance(split, RandomSplit)
    return _random_assign(len(frame), split.probabilities, rng)


def split(frame: pd.DataFrame, how, seed: int) -> dict[str, pd.DataFrame]:
    labels = assign(frame, how, seed)
    # each split keeps the table's row labels, so an error about a cell names the row the user can find in the file
    return {name: frame[labels == i] for i, name in enumerate(SPLITS)}
