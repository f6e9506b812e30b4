"""The on-disk cache of preprocessed splits, shared by every model type: `<root>/preprocessed/<key>/`.

An entry holds one `.npz` per split (`data.tensors.Table`, never a pickle) and `metadata.json`, written last: its
presence means the entry is complete, so a run killed while writing one leaves an entry that is never read. The key
is a digest of everything that changes the tables (the caller says what); any change misses the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tunefork.data.tensors import Table

METADATA = "metadata.json"


def root(config) -> Path:
    """backend.cache_dir, else $TUNEFORK_CACHE_DIR, else ~/.cache/tunefork."""
    return Path(config.backend.cache_dir or os.environ.get("TUNEFORK_CACHE_DIR") or Path.home() / ".cache" / "tunefork")


def key(parts: dict) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def load(folder: Path | None, splits) -> tuple[dict, dict[str, Table]] | None:
    """(metadata, {split: Table}) of a complete entry, or None."""
    if folder is None or not (folder / METADATA).is_file():
        return None
    return json.loads((folder / METADATA).read_text()), {name: Table.load(folder / f"{name}.npz") for name in splits}


def store(folder: Path | None, meta: dict, tables: dict[str, Table]) -> None:
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.save(folder / f"{name}.npz")
    tmp = folder / (METADATA + ".tmp")
    tmp.write_text(json.dumps(meta))
    tmp.replace(folder / METADATA)  # written last: its presence means the entry is complete
