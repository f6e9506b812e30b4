"""The on-disk cache of preprocessed splits, shared by every model type: `<root>/preprocessed/<key>/`.

An entry holds one `.npz` per split (`data.tensors.Table`, never a pickle) and `metadata.json`, written last: its
presence means the entry is complete, so a run killed while writing one leaves an entry that is never read. The key
is a digest of everything that changes the tables (the caller says what); any change misses the cache.

A damaged entry (a truncated or corrupted file: numpy's zip reader checks each array's CRC-32, so a changed byte
fails the read too) is dropped with a warning and recomputed, never left to block later runs. A write the machine
refuses (disk full, permissions, a file where the folder should be) removes what it wrote and is one sentence
(`EnvironmentFailure`, exit 1) naming the cache folder and how to move it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

from tunefork.data.tensors import Table
from tunefork.errors import EnvironmentFailure, environment_failure, first_line

log = logging.getLogger("tunefork")
METADATA = "metadata.json"
# what reading a damaged .npz / JSON raises: a truncated zip, a failed CRC, a missing array, broken JSON
DAMAGE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def root(config) -> Path:
    """backend.cache_dir, else $TUNEFORK_CACHE_DIR, else ~/.cache/tunefork."""
    return Path(config.backend.cache_dir or os.environ.get("TUNEFORK_CACHE_DIR") or Path.home() / ".cache" / "tunefork")


def key(parts: dict) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def load(folder: Path | None, splits) -> tuple[dict, dict[str, Table]] | None:
    """(metadata, {split: Table}) of a complete entry, or None (no entry, or a damaged one, now dropped)."""
    if folder is None or not (folder / METADATA).is_file():
        return None
    try:
        return json.loads((folder / METADATA).read_text()), {name: Table.load(folder / f"{name}.npz") for name in splits}
    except DAMAGE as exc:
        drop(folder, exc)
        return None


def drop(entry: Path, exc: BaseException) -> None:
    """Remove a damaged cache entry (a folder or a file), saying so in one warning line."""
    log.warning("cache entry %s is damaged (%s): dropped, recomputing it", entry, first_line(exc))
    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def refused(exc: BaseException, path: Path) -> EnvironmentFailure | None:
    """A refused cache write as one sentence that says how to move the cache, or None when it is not one."""
    failure = environment_failure(exc, "write the cache", path)
    return None if failure is None else EnvironmentFailure(
        f"{failure}; free some space, or point backend.cache_dir (or $TUNEFORK_CACHE_DIR) at a writable folder")


def store(folder: Path | None, meta: dict, tables: dict[str, Table]) -> None:
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            table.save(folder / f"{name}.npz")
        tmp = folder / (METADATA + ".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(folder / METADATA)  # written last: its presence means the entry is complete
    except Exception as exc:
        if folder.is_dir() and not (folder / METADATA).is_file():
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete entry, temporary files and all
        failure = refused(exc, folder)
        if failure is None:
            raise
        raise failure from None
