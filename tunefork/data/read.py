"""Read a dataset into a pandas DataFrame: CSV, TSV, JSON, JSONL, Parquet, or a DataFrame / Arrow table as is.

Every failure is a `DataError` naming the file, so the CLI can say it in one sentence.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tunefork.errors import DataError, did_you_mean

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


# Ludwig's `data_format` names: the ones read here, and what to do about the others
DATA_FORMATS = ("auto", "csv", "tsv", "json", "jsonl", "parquet", "df", "dict")
UNREAD_FORMATS = {"pickle": "a pickle can run code when loaded", "hdf5": "Ludwig's HDF5 cache is Ludwig's own",
                  "excel": "", "feather": "", "fwf": "", "html": "", "orc": "", "sas": "", "spss": "", "stata": ""}


def _read_file(path: Path, kind: str | None = None) -> pd.DataFrame:
    kind = kind or FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}' (use one of: {', '.join(sorted(FORMATS))}, or "
                        "name the format with data_format)")
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


def with_format(source, data_format: str | None, what: str = "dataset"):
    """`source` read as Ludwig's `data_format` says (a file of another extension read as CSV, say), or `source`
    itself when the format is None or 'auto' (the extension decides) or the source is not a file path."""
    if data_format in UNREAD_FORMATS:
        why = UNREAD_FORMATS[data_format]
        raise DataError(f"data_format '{data_format}' is not read by tunefork{f' ({why})' if why else ''}: save the "
                        "table as CSV, TSV, JSON, JSONL or Parquet and give that file")
    if data_format not in (None, *DATA_FORMATS):
        raise DataError(f"data_format '{data_format}' is not a format (one of: {', '.join(DATA_FORMATS)})"
                        f"{did_you_mean(data_format, DATA_FORMATS)}")
    if data_format == "dict" and isinstance(source, dict):
        return pd.DataFrame(source)
    if data_format in (None, "auto", "df", "dict") or not isinstance(source, (str, Path)):
        return source
    return read(source, what, data_format)


def read(source, what: str = "dataset", data_format: str | None = None) -> pd.DataFrame:
    """Return a DataFrame for `source` (a path, a DataFrame or a pyarrow Table); a path is read by its extension,
    or as `data_format` (csv, tsv, json, jsonl, parquet) when given. A DataFrame keeps the name of the file it was
    read from."""
    if isinstance(source, pd.DataFrame):
        frame = source.reset_index(drop=True)
        name = source.attrs.get("source") or f"the {what} DataFrame"
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
            frame = _read_file(path, data_format)
        except DataError:
            raise
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text ({_first_non_utf8(path)}); re-save the file as UTF-8") from None
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: the file has no columns") from None
        except pd.errors.ParserError as exc:
            first_line = str(exc).strip().splitlines()[-1]
            raise DataError(f"{path}: cannot be parsed as {(data_format or path.suffix[1:]).upper()} ({first_line})") from None
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
    digest.update(pd.util.hash_pandas_object(_hashable(frame), index=False).values.tobytes())
    return digest.hexdigest()


def _hashable(frame: pd.DataFrame) -> pd.DataFrame:
    """Nested values (a `messages` column's lists of turns: lists from JSON, numpy arrays from Parquet) as JSON text,
    the same for both, so pandas can hash them."""
    nested = [c for c in frame.columns if frame[c].dtype == object
              and frame[c].map(lambda v: isinstance(v, (list, dict, np.ndarray))).any()]
    if not nested:
        return frame
    plain = lambda v: v.tolist() if isinstance(v, np.ndarray) else v  # noqa: E731
    return frame.assign(**{c: frame[c].map(lambda v: json.dumps(v, default=plain, sort_keys=True)
                                           if isinstance(v, (list, dict, np.ndarray)) else v) for c in nested})
