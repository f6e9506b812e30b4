"""Preprocessed columns: dense numpy arrays, and ragged token ids stored flat with offsets.

A `Table` is what features.transform produces and what the training loop batches from; it round-trips through one
`.npz` file so the preprocessing cache is a plain file, not a pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TokenIds:
    """Variable-length token id rows, stored as one flat int32 array plus row offsets."""

    flat: np.ndarray
    offsets: np.ndarray  # len(rows) + 1

    @classmethod
    def from_rows(cls, rows: list[list[int]]) -> TokenIds:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def take(self, index: np.ndarray) -> TokenIds:
        return TokenIds.from_rows([self.row(i) for i in index])

    def padded(self, index, pad_id: int, left: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Rows `index` padded to the longest of them (never to the global maximum): ids and attention mask."""
        lengths = self.lengths[index]
        width = int(lengths.max()) if len(index) else 0
        ids = np.full((len(index), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(index), width), dtype=np.int64)
        for j, (i, n) in enumerate(zip(index, lengths, strict=True)):
            cols = slice(width - n, width) if left else slice(0, n)
            ids[j, cols] = self.row(i)
            mask[j, cols] = 1
        return ids, mask


@dataclass(frozen=True)
class Embeddings:
    """A text column replaced by its encoder's pooled vectors; the token lengths stay for batching by length."""

    vectors: np.ndarray  # (rows, hidden) float32
    lengths: np.ndarray  # (rows,) tokens per row before encoding

    def __len__(self) -> int:
        return len(self.vectors)

    def take(self, index: np.ndarray) -> Embeddings:
        return Embeddings(self.vectors[index], self.lengths[index])


class Table:
    """Named columns of equal length: numpy arrays, `TokenIds` or `Embeddings`."""

    def __init__(self, columns: dict[str, np.ndarray | TokenIds | Embeddings]):
        lengths = {len(c) for c in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: { {k: len(v) for k, v in columns.items()} }")
        self.columns = columns
        self.length = lengths.pop() if lengths else 0
        self.row_index = None  # positions of these rows in the source table, when some were dropped

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, name: str):
        return self.columns[name]

    def take(self, index: np.ndarray) -> Table:
        return Table({k: v[index] if isinstance(v, np.ndarray) else v.take(index) for k, v in self.columns.items()})

    def replace(self, name: str, column) -> Table:
        table = Table({**self.columns, name: column})
        table.row_index = self.row_index
        return table

    def save(self, path: Path) -> None:
        arrays = {}
        for name, column in self.columns.items():
            if isinstance(column, TokenIds):
                arrays[f"{name}::flat"], arrays[f"{name}::offsets"] = column.flat, column.offsets
            else:
                arrays[name] = column
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Table:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        columns: dict[str, np.ndarray | TokenIds] = {}
        for key, value in arrays.items():
            if key.endswith("::flat"):
                name = key[: -len("::flat")]
                columns[name] = TokenIds(value, arrays[f"{name}::offsets"])
            elif not key.endswith("::offsets"):
                columns[key] = value
        return cls(columns)
