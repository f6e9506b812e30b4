"""Pretrained word vectors from a GloVe-format text file (`word v1 v2 ...` per line), as Ludwig's
`pretrained_embeddings` reads them: the vocabulary's words keep their vectors, the rest of the file is skipped."""

from __future__ import annotations

import numpy as np

from tunefork.errors import ConfigError


def read(path: str, vocab: list[str], where: str) -> tuple[np.ndarray, int]:
    """Vectors for `vocab` from a GloVe-format text file (`word v1 v2 ...` per line), and how many words were found.
    A word the file lacks starts at the found vectors' mean plus Gaussian noise of a tenth of their spread (Ludwig:
    "the average of all other embeddings plus some random noise"); lines are streamed, so a large file costs time,
    not memory."""
    wanted = {word: i for i, word in enumerate(vocab)}
    found: dict[int, np.ndarray] = {}
    size = None
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                word, _, rest = line.rstrip("\n").partition(" ")
                if size is None:
                    size = len(rest.split())
                if word in wanted and wanted[word] not in found:
                    vector = np.array(rest.split(), dtype=np.float32)
                    if len(vector) != size:
                        raise ConfigError([f"{where}: {path} line {number} has {len(vector)} numbers, line 1 has {size}"])
                    found[wanted[word]] = vector
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError([f"{where}: cannot read {path} as GloVe text ({exc})"]) from None
    if not size or not found:
        raise ConfigError([f"{where}: {path} holds no vector for any word of the vocabulary"])
    known = np.stack(list(found.values()))
    rng = np.random.default_rng(0)
    matrix = known.mean(0) + rng.normal(0.0, 0.1 * known.std(0) + 1e-6, (len(vocab), size)).astype(np.float32)
    for i, vector in found.items():
        matrix[i] = vector
    return matrix, len(found)


def size(path: str, where: str) -> int:
    """The vector size of a GloVe file (its first line), which the embedding takes, as in Ludwig."""
    try:
        with open(path, encoding="utf-8") as lines:
            return len(lines.readline().split()) - 1
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{where}: cannot read {path} ({exc})"]) from None
