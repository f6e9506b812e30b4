"""Few-shot prompts (`prompt.retrieval`): each row's prompt gets `k` labelled training rows at `{__context__}`.

    prompt: {task: "...", retrieval: {type: semantic, k: 3, model_name: all-MiniLM-L6-v2}}

The index is the training split's labelled rows. Each is a record `{input feature name: text, output feature name:
label}`, and the context is Ludwig's rendering of the k records retrieved, `str(list_of_records)`:
`[{'review': 'a fine film', 'label': 'positive'}, ...]`.

- `random`: k rows drawn per row, from a generator seeded by the row's input text, so a row gets the same examples
  in training, after a save → load and when served.
- `semantic`: the k rows whose input is nearest the row's input, by cosine similarity of sentence embeddings
  (sentence-transformers, what Ludwig's retrieval uses, here with `model_name` loaded offline-capable from a folder
  or hub id). Ludwig embeds queries as the JSON of the whole row, label included, which lets a test row find its
  own answer; here a query is its input text alone, like the indexed rows.

On the training split a row never retrieves itself (it would be shown its own answer). Prediction retrieves from the
training rows saved with the model: their records are in `training_set_metadata.json` (`retrieval.rows`) in
`model/`, so `Model.load(...).predict` and `serve` retrieve as training did. The embeddings of those rows are the
expensive part: they are computed once per (encoder, rows) and kept in the preprocessing cache (`data/cache.py`), so
training, evaluation and predictions after a load on the same machine reuse them; elsewhere they are recomputed once.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tunefork.errors import TuneforkError, first_line

CHUNK = 1024  # query rows scored against the index at a time: bounded memory for large sets


@dataclass
class Index:
    records: list[dict]  # Ludwig's records of the training rows, in order
    encoder: object = None  # the SentenceTransformer of semantic retrieval (loaded on first use)
    vectors: np.ndarray | None = None  # unit-length embeddings of the records' inputs (semantic)

    def to_meta(self) -> dict:
        return {"rows": self.records}


def _text(values: pd.Series) -> list[str]:
    return values.where(values.notna(), "").astype(str).tolist()


def records(config, training: pd.DataFrame) -> list[dict]:
    inp, out = config.input, config.output
    texts, labels = _text(training[inp.source]), [t.strip() for t in _text(training[out.source])]
    return [{inp.name: text, out.name: label} for text, label in zip(texts, labels, strict=True)]


def build(config, training: pd.DataFrame, cache_root=None) -> Index | None:
    """The index of the training split's labelled rows (None without retrieval)."""
    if not config.prompt.retrieval.type:
        return None
    return from_meta(config, {"rows": records(config, training)}, cache_root)


def from_meta(config, meta: dict | None, cache_root=None) -> Index | None:
    """The index of the records saved with a model (`Index.to_meta`); semantic vectors from the cache or computed."""
    if not config.prompt.retrieval.type:
        return None
    if not meta or not meta.get("rows"):
        raise TuneforkError("prompt.retrieval retrieves from the training rows, and this model has none: train it "
                            "first (with trainer.type none, train() only builds the index)")
    index = Index(meta["rows"])
    if config.prompt.retrieval.type == "semantic":
        index.encoder = encoder(config)
        index.vectors = _cached_vectors(config, index, cache_root)
    return index


@functools.lru_cache(maxsize=2)
def _sentence_encoder(name: str, trust_remote_code: bool):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name, trust_remote_code=trust_remote_code)


def encoder(config):
    """The sentence encoder `prompt.retrieval.model_name` (sentence-transformers: mean pooling for a plain folder),
    loaded once per process: training, evaluation, predictions and a server share it (it only encodes)."""
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise TuneforkError("semantic retrieval needs sentence-transformers: pip install 'tunefork[llm]'") from None
    name = config.prompt.retrieval.model_name
    try:
        return _sentence_encoder(name, config.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise TuneforkError(f"prompt.retrieval.model_name '{name}': cannot load it as a sentence encoder "
                            f"({first_line(exc)})") from None


def embed(index: Index, texts: list[str]) -> np.ndarray:
    vectors = index.encoder.encode(texts, batch_size=64, show_progress_bar=False, convert_to_numpy=True)
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _cached_vectors(config, index: Index, cache_root) -> np.ndarray:
    from tunefork.data import cache
    from tunefork.data.tensors import Table

    inputs = [record[config.input.name] for record in index.records]
    digest = hashlib.blake2b(json.dumps(inputs).encode(), digest_size=16).hexdigest()
    key = cache.key({"retrieval": config.prompt.retrieval.model_name, "inputs": digest})
    folder = cache_root / "retrieval" / key if cache_root else None
    found = cache.load(folder, ["index"])
    if found is not None:
        return found[1]["index"]["vectors"]
    vectors = embed(index, inputs)
    cache.store(folder, {"model_name": config.prompt.retrieval.model_name, "rows": len(inputs)},
                {"index": Table({"vectors": vectors})})
    return vectors


def nearest(config, index: Index, texts: list[str], exclude_self: bool) -> np.ndarray:
    """Positions of the retrieved records per row, (rows, k). With `exclude_self`, row i is index record i (the
    training split) and never retrieves itself."""
    k = min(config.prompt.retrieval.count, len(index.records) - int(exclude_self))
    if k <= 0:
        raise TuneforkError("prompt.retrieval: the training split has too few labelled rows to retrieve from")
    if config.prompt.retrieval.type == "random":
        return np.stack([_draw(text, len(index.records), k, i if exclude_self else None) for i, text in enumerate(texts)])
    queries = index.vectors[: len(texts)] if exclude_self else embed(index, texts)  # the training split: its own rows
    out = np.empty((len(texts), k), dtype=np.int64)
    for start in range(0, len(texts), CHUNK):
        scores = queries[start : start + CHUNK] @ index.vectors.T
        if exclude_self:
            rows = np.arange(start, start + len(scores))
            scores[rows - start, rows] = -np.inf
        # the k best, best first (ties: the earlier training row)
        out[start : start + len(scores)] = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return out


def _draw(text: str, n: int, k: int, own: int | None) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    picks = np.random.default_rng(seed).choice(n - (own is not None), size=k, replace=False)
    return picks + (picks >= own) if own is not None else picks


def contexts(config, index: Index | None, frame: pd.DataFrame, exclude_self: bool = False) -> list[str] | None:
    """`{__context__}` of every row of `frame` (None without retrieval): Ludwig's `str` of the retrieved records."""
    if index is None:
        return None
    picks = nearest(config, index, _text(frame[config.input.source]), exclude_self)
    return [str([index.records[j] for j in row]) for row in picks]
