"""Cached encoder embeddings: a frozen encoder's pooled vectors, computed once per distinct text and kept on disk.

The floor for a frozen encoder is one forward pass over each distinct text. This module gets there: rows equal in
token ids (within and across splits) are encoded once, batches are length-sorted so padding is minimal, and the
batch grows while it still pays off. The vectors are stored under a key covering everything that changes them:
model identity and weights fingerprint, tokenizer, max_sequence_length, pooling, precision and the token ids
themselves (which covers the dataset's content).

The cache files follow the preprocessing cache's rules (`data.cache`): a damaged file is dropped with a warning and
recomputed, and a refused write leaves no temporary file and is one sentence with exit 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from tunefork.config.features import is_transformer
from tunefork.data.tensors import Embeddings, TokenIds

log = logging.getLogger("tunefork.embeddings")
CACHE_VERSION = 1
START_TOKENS, MAX_TOKENS, MAX_ROWS = 2048, 32768, 512


def _file_digest(path: Path, memo: dict) -> str:
    """blake2b of a weights file, remembered by (size, mtime) so a big checkpoint is hashed once, not every run."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in memo:
        digest = hashlib.blake2b(digest_size=16)
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        memo[key] = digest.hexdigest()
    return memo[key]


def weights_fingerprint(encoder_module, source: str, cache_dir: Path) -> str:
    """Fingerprint of the encoder's weights: their files' content when `source` is a local folder, else the tensors."""
    folder = Path(source)
    files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")) if folder.is_dir() else []
    if files:
        from tunefork.data import cache

        memo_path = cache_dir / "weights_fingerprints.json"
        memo = {}
        if memo_path.is_file():
            try:
                memo = dict(json.loads(memo_path.read_text()))
            except (*cache.DAMAGE, TypeError) as exc:  # only a memo: hashing again costs time, not correctness
                cache.drop(memo_path, exc)
        digest = hashlib.blake2b(json.dumps([(p.name, _file_digest(p, memo)) for p in files]).encode(), digest_size=16).hexdigest()
        _write_atomic(memo_path, memo_path.with_suffix(".tmp"), lambda tmp: tmp.write_text(json.dumps(memo)))
        return digest
    digest = hashlib.blake2b(digest_size=16)  # a hub id or a model built in memory: hash the tensors themselves
    for name, tensor in sorted(encoder_module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _write_atomic(path: Path, tmp: Path, write) -> None:
    """`write(tmp)`, then rename it to `path`; a refused write removes `tmp` and is one sentence (exit 1)."""
    from tunefork.data import cache

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except Exception as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        failure = cache.refused(exc, path)
        if failure is None:
            raise
        raise failure from None


def _load_cached(path: Path, columns: dict[str, TokenIds]) -> dict[str, Embeddings] | None:
    """The cached vectors at `path` per split, or None: absent, or damaged (then dropped)."""
    from tunefork.data import cache

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            vectors = stored["vectors"]
            return {s: Embeddings(vectors[stored[f"index::{s}"]], columns[s].lengths) for s in columns}
    except (*cache.DAMAGE, IndexError) as exc:
        cache.drop(path, exc)
        return None


def distinct_rows(columns: dict[str, TokenIds]) -> tuple[TokenIds, dict[str, np.ndarray]]:
    """All splits' rows deduplicated by token ids: (unique rows, per-split index into them)."""
    seen: dict[bytes, int] = {}
    unique: list[np.ndarray] = []
    index = {}
    for split, column in columns.items():
        positions = np.empty(len(column), dtype=np.int64)
        for i in range(len(column)):
            row = column.row(i)
            key = row.tobytes()
            if key not in seen:
                seen[key] = len(unique)
                unique.append(row)
            positions[i] = seen[key]
        index[split] = positions
    return TokenIds.from_rows(unique), index


def _batches(lengths: np.ndarray, order: np.ndarray, budget: int):
    """Consecutive rows of `order` whose padded size (rows × the longest of them) stays within `budget` tokens."""
    i = 0
    while i < len(order):
        j, width = i + 1, lengths[order[i]]
        while j < len(order) and j - i < MAX_ROWS:
            wider = max(width, lengths[order[j]])
            if (j - i + 1) * wider > budget:
                break
            j, width = j + 1, wider
        yield order[i:j]
        i = j


@torch.inference_mode()
def encode(encoder_module, rows: TokenIds, pad_id: int, left_padding: bool, device: str, autocast) -> np.ndarray:
    """Pooled vectors for `rows`, longest first, doubling the token budget per batch while throughput improves."""
    encoder_module.eval()
    lengths = rows.lengths
    order = np.argsort(-lengths, kind="stable")  # longest first: the peak memory is met on the first batch
    out = np.empty((len(rows), encoder_module.output_size), dtype=np.float32)
    budget, best_rate, settled = START_TOKENS, 0.0, False
    done = 0
    while done < len(order):
        batch = next(_batches(lengths, order[done:], budget))
        ids, mask = rows.padded(batch, pad_id, left=left_padding)
        start = time.perf_counter()
        with autocast:
            vectors = encoder_module.encode(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        out[batch] = vectors.float().cpu().numpy()
        rate = int(mask.sum()) / (time.perf_counter() - start)
        done += len(batch)
        if not settled:
            # keep doubling while a bigger batch is at least 5% faster per token
            if rate > best_rate * 1.05 and budget < MAX_TOKENS:
                best_rate, budget = rate, budget * 2
            else:
                budget, settled = max(START_TOKENS, budget // 2 if rate < best_rate else budget), True
    return out


def cache_key(parts: dict) -> str:
    return hashlib.blake2b(json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True).encode(), digest_size=16).hexdigest()


def tokens_digest(columns: dict[str, TokenIds]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for split in sorted(columns):
        digest.update(split.encode())
        digest.update(columns[split].flat.tobytes())
        digest.update(columns[split].offsets.tobytes())
    return digest.hexdigest()


def embed(columns: dict[str, TokenIds], encoder_module, key_parts: dict, cache_dir: Path | None,
          pad_id: int, left_padding: bool, device: str, autocast) -> tuple[dict[str, Embeddings], bool]:
    """Per split, the pooled embeddings of each row; (embeddings, cache hit)."""
    key = cache_key({**key_parts, "tokens": tokens_digest(columns)})
    path = cache_dir / "embeddings" / f"{key}.npz" if cache_dir is not None else None
    cached = _load_cached(path, columns) if path is not None else None
    if cached is not None:
        return cached, True
    unique, index = distinct_rows(columns)
    vectors = encode(encoder_module, unique, pad_id, left_padding, device, autocast)
    log.info("encoded %d distinct texts (of %d rows)", len(unique), sum(len(c) for c in columns.values()))
    if path is not None:
        _write_atomic(path, path.with_name(path.stem + ".tmp.npz"),
                      lambda tmp: np.savez(tmp, vectors=vectors, **{f"index::{s}": i for s, i in index.items()}))
    return {s: Embeddings(vectors[i], columns[s].lengths) for s, i in index.items()}, False


def embed_frozen(config, plan, model, tables: dict, meta: dict, tokenizer_ids: dict, amp) -> tuple[dict, list[str]]:
    """Each cache-eligible text column replaced by its frozen encoder's pooled vectors (computed once, or loaded);
    returns the tables and the features whose vectors came from the cache. The key covers everything that changes
    the vectors: the model and its weights, the tokenizer (`tokenizer_ids`: its identity digest per feature), the
    sequence length, pooling and precision (and the token ids themselves, added by `embed`). `amp`: the autocast
    context of the plan's precision."""
    from tunefork.data import cache

    hits, folder = [], cache.root(config)
    encoders = model.text_encoders()
    for feature in config.input_features:
        if not is_transformer(feature) or not plan[f"cache_embeddings.{feature.name}"]:
            continue
        encoder, fitted = encoders[feature.name].to(plan["device"]), meta["inputs"][feature.name]
        source = feature.encoder.pretrained_model_name_or_path
        key_parts = {
            "model": source,
            "weights": weights_fingerprint(encoder.transformer, source, folder),
            "tokenizer": tokenizer_ids[feature.name],
            "max_sequence_length": fitted["max_sequence_length"],
            "pooling": plan[f"pooling.{feature.name}"],
            "precision": plan["precision"],
        }
        columns = {split: table[feature.name] for split, table in tables.items()}
        vectors, hit = embed(columns, encoder, key_parts, folder, fitted["pad_token_id"],
                             fitted["padding_side"] == "left", plan["device"], amp)
        tables = {split: table.replace(feature.name, vectors[split]) for split, table in tables.items()}
        if hit:
            hits.append(feature.name)
    return tables, hits

