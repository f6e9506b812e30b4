"""Read a dataset into a pandas DataFrame: CSV, TSV, JSON, JSONL, Parquet, or a DataFrame / Arrow table as is.

Every failure is a `DataError` naming the file, so the CLI can say it in one sentence.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from tunefork.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def _read_file(path: Path) -> pd.DataFrame:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}' (use one of: {', '.join(sorted(FORMATS))})")
    if kind in ("csv", "tsv"):
        sep = "\t" if kind == "tsv" else ","
        _refuse_duplicate_columns(path, sep)
        return pd.read_csv(path, sep=sep, keep_default_na=True, encoding="utf-8")
    # precise_float: pandas' fast float parser is off by an ulp now and then, so the same table read from JSON
    # and from CSV would differ (and so would its fingerprint)
    if kind == "jsonl":
        return pd.read_json(path, lines=True, dtype=False, precise_float=True)
    if kind == "json":
        return pd.read_json(path, dtype=False, precise_float=True)
    return pd.read_parquet(path)


def _refuse_duplicate_columns(path: Path, sep: str) -> None:
    """pandas renames a repeated header name (`x`, `x.1`), so a feature would silently read one of two columns.
    The header is read raw, as pandas' own parser splits it (quotes included), and a repeat is an error. Empty
    names are left alone: pandas calls them `Unnamed: <position>`, which cannot collide. (JSON objects hold each
    key once, and Parquet writers refuse duplicate names.)"""
    header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False, encoding="utf-8")
    names = [str(name) for name in header.iloc[0]] if len(header) else []
    seen: dict[str, int] = {}
    for position, name in enumerate(names, 1):
        if name.strip() == "":
            continue
        if name in seen:
            raise DataError(f"{path}: column '{name}' appears twice in the header (columns {seen[name]} and "
                            f"{position}); rename one of them")
        seen[name] = position


def _first_non_utf8(path: Path) -> str:
    # the parser's own offset counts from the start of a field, not of the file: find the line ourselves
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return f"line {number}"
    return "an invalid byte"


def read(source, what: str = "dataset") -> pd.DataFrame:
    """Return a DataFrame for `source` (a path, a DataFrame or a pyarrow Table)."""
    if isinstance(source, pd.DataFrame):
        frame = source.reset_index(drop=True)
        name = f"the {what} DataFrame"
    elif type(source).__module__.startswith("pyarrow"):
        frame = source.to_pandas()
        name = f"the {what} table"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise DataError(f"{path}: {what} file not found")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty")
        try:
            frame = _read_file(path)
        except DataError:
            raise
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text ({_first_non_utf8(path)}); re-save the file as UTF-8") from None
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: the file has no columns") from None
        except pd.errors.ParserError as exc:
            first_line = str(exc).strip().splitlines()[-1]
            raise DataError(f"{path}: cannot be parsed as {path.suffix[1:].upper()} ({first_line})") from None
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: cannot be read ({str(exc).splitlines()[0]})") from None
    if len(frame) == 0:
        raise DataError(f"{name}: no rows")
    frame.attrs["source"] = name
    return frame


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of the table: same rows, columns and values → same fingerprint, whatever the file was."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return digest.hexdigest()
