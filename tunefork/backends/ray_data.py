"""A dataset given as a folder or glob of Parquet / CSV files: read and preprocessed by Ray Data, in parallel.

The files are never gathered into one pandas frame. Ray Data reads them in blocks across the cluster, and:

1. every block gets its split (training / validation / test) from a seeded hash of each row's content — the same
   row always lands in the same split, whatever the block boundaries, file order or number of reading tasks;
2. the feature metadata (vocabularies, statistics) is fitted by `features.pipeline.fit`, unchanged, on the training
   rows of the small columns only: a text column is replaced by a one-character stand-in that keeps only whether the
   cell is missing (that is all fitting reads of it), so the text never travels to the driver;
3. `map_batches` runs `features.pipeline.transform` — tokenization included — on every block in parallel and
   returns token ids as Arrow list columns, from which the driver takes the flat ids and offsets of `TokenIds`
   without a Python loop.

The order of rows is Ray Data's deterministic order (`preserve_order`), so a run is reproducible from its seed.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tunefork.config.features import is_transformer
from tunefork.errors import DataError, TuneforkError

SPLIT = "__tunefork_split"
ERROR = "__tunefork_error"
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def file_set(dataset) -> list[str] | None:
    """The files of `dataset` when it is a folder or a glob pattern; None for anything else (one file, a frame).
    On a cluster of several machines the folder must be shared storage: the driver lists it, any node reads."""
    if not isinstance(dataset, (str, Path)):
        return None
    text = str(dataset)
    if Path(text).is_file():  # a file named like a pattern (`data[1].csv`) is that file
        return None
    if any(c in text for c in "*?["):
        files = sorted(glob.glob(text, recursive=True))
        if not files:
            raise DataError(f"{text}: no file matches this pattern")
    elif Path(text).is_dir():
        files = sorted(str(p) for p in Path(text).rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
        if not files:
            raise DataError(f"{text}: the folder holds no data files")
    else:
        return None
    kinds = {FORMATS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds or len(kinds) > 1:
        odd = next((f for f in files if FORMATS.get(Path(f).suffix.lower()) is None), files[0])
        raise DataError(f"{text}: a folder or glob must hold Parquet or CSV files of one kind ({odd} is not)")
    return files


def fingerprint(files: list[str]) -> str:
    """Names, sizes and modification times: reading every byte again just to compare runs would defeat the purpose."""
    digest = hashlib.blake2b(digest_size=16)
    for name in files:
        stat = os.stat(name)
        digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _check_supported(config) -> None:
    sampling = config.preprocessing
    if sampling.split.type == "stratify":
        raise TuneforkError("preprocessing.split: stratify needs the whole table at once; with a folder of files use "
                            "random or fixed")
    if sampling.sample_size is not None:
        raise TuneforkError("preprocessing.sample_size: not available for a folder of files; use sample_ratio")
    for feature in (*config.input_features, *config.output_features):
        if feature.preprocessing.missing_value_strategy in ("bfill", "ffill"):
            raise TuneforkError(f"{feature.name}: missing_value_strategy {feature.preprocessing.missing_value_strategy} "
                                f"depends on row order across files; use a fill value or drop_row with a folder of files")


@contextlib.contextmanager
def _ordered_and_quiet():
    """Ray Data settings for tunefork's datasets only (each dataset keeps a copy of the context it was made in);
    the process-wide context is put back afterwards."""
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars, context.print_on_execution_start)
    context.execution_options.preserve_order = True  # the same rows in the same order on every run
    context.enable_progress_bars = False  # a progress report every few seconds would drown tunefork's own lines
    context.print_on_execution_start = False
    try:
        yield
    finally:
        (context.execution_options.preserve_order, context.enable_progress_bars,
         context.print_on_execution_start) = saved


def read(files: list[str], parallelism: int | None):
    import ray.data

    kind = FORMATS.get(Path(files[0]).suffix.lower(), "parquet")
    options = {"override_num_blocks": parallelism} if parallelism else {}
    reader = ray.data.read_parquet if kind == "parquet" else ray.data.read_csv
    try:
        return reader(files, **options)
    except Exception as exc:  # noqa: BLE001 — pyarrow and Ray raise many kinds; each is a file the user gave
        raise DataError(f"{files[0]}: cannot be read by Ray Data ({str(exc).splitlines()[0]})") from None


def assign_split(frame: pd.DataFrame, how, seed: int) -> np.ndarray:
    """0 / 1 / 2 per row. Random: a seeded hash of the row's values, uniform in [0, 1), against the cumulative split
    probabilities (so the proportions hold in expectation, not to the row as with one table). Fixed: the column."""
    from tunefork.data import split as split_mod

    if how.type == "fixed":
        return split_mod.assign(frame, how, seed)
    columns = [c for c in frame.columns if c != SPLIT]
    hashed = pd.util.hash_pandas_object(frame[columns], index=False, hash_key=f"{seed:016d}"[:16]).to_numpy()
    uniform = hashed / np.float64(2**64)
    edges = np.cumsum(how.probabilities)[:2]
    return np.searchsorted(edges, uniform, side="right").astype(np.int8)


def _stand_ins(frame: pd.DataFrame, config, seed: int) -> pd.DataFrame:
    """The columns fitting reads, with the split; text reduced to whether each cell is missing."""
    from tunefork.features import missing

    out = {}
    for feature in (*config.input_features, *config.output_features):
        values = frame[feature.source]
        if is_transformer(feature) and feature.preprocessing.missing_value_strategy != "fill_with_mode":
            values = pd.Series(np.where(missing.is_missing(values), None, "t"), index=frame.index, dtype=object)
        out[feature.source] = values
    result = pd.DataFrame(out)
    result[SPLIT] = assign_split(frame, config.preprocessing.split, seed)
    return result


def _transformed(frame: pd.DataFrame, config, meta: dict, toks: dict, seed: int):
    """One block preprocessed: each feature's column as Arrow (token ids as list<int32>), plus the split."""
    import pyarrow as pa

    from tunefork.data.tensors import TokenIds
    from tunefork.features import pipeline

    splits = assign_split(frame, config.preprocessing.split, seed)
    frame = frame.reset_index(drop=True)
    try:
        table = pipeline.transform(config, frame, meta, toks)
    except TuneforkError as exc:
        # handed back as data: raised here, it would reach the user as Ray's task traceback wrapped twice
        return pa.table({ERROR: [str(exc)]})
    kept = np.asarray(table.row_index)  # rows dropped for missing values are gone from the table
    arrays = {SPLIT: pa.array(splits[kept])}
    for name, column in table.columns.items():
        if isinstance(column, TokenIds):
            arrays[name] = pa.ListArray.from_arrays(pa.array(column.offsets.astype(np.int32)), pa.array(column.flat))
        elif column.ndim == 2:  # a set output's multi-hot rows
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(column.ravel()), column.shape[1])
        else:
            arrays[name] = pa.array(column)
    return pa.table(arrays)


def preprocess(config, files: list[str], seed: int, toks: dict, parallelism: int | None = None):
    """(meta, {split: Table}) from the files, with Ray Data doing the reading and the per-row work."""
    _check_supported(config)
    with _ordered_and_quiet():
        return _preprocess(config, files, seed, toks, parallelism)


def _preprocess(config, files: list[str], seed: int, toks: dict, parallelism: int | None):
    from tunefork.features import pipeline

    dataset = read(files, parallelism)
    columns = set(dataset.schema().names)
    needed = {f.source for f in (*config.input_features, *config.output_features)}
    if config.preprocessing.split.type == "fixed":
        needed.add(config.preprocessing.split.column)
    absent = sorted(needed - columns)
    if absent:
        raise DataError(f"{files[0]}: column '{absent[0]}' not found; columns are: {', '.join(sorted(columns)[:12])}")
    if config.preprocessing.sample_ratio < 1.0:
        dataset = dataset.random_sample(config.preprocessing.sample_ratio, seed=seed)

    small = dataset.map_batches(_stand_ins, fn_kwargs={"config": config, "seed": seed}, batch_format="pandas")
    frame = small.to_pandas()  # a few narrow columns: labels, numbers, categories, missing-text flags
    training = frame[frame[SPLIT] == 0].drop(columns=SPLIT)
    if len(training) == 0:
        raise DataError(f"{files[0]}: the training split has no rows (check preprocessing.split)")
    training.attrs["source"] = str(Path(files[0]).parent)
    meta = pipeline.fit(config, training, toks)

    transformed = dataset.map_batches(_transformed, fn_kwargs={"config": config, "meta": meta, "toks": toks, "seed": seed},
                                      batch_format="pandas")
    return meta, _tables(transformed, config)


def _tables(transformed, config) -> dict:
    """The driver's `Table` per split, assembled from Arrow blocks without touching rows one by one."""
    import pyarrow as pa

    from tunefork.data.tensors import Table, TokenIds

    blocks = []
    for block in transformed.iter_batches(batch_format="pyarrow", batch_size=None):
        if ERROR in block.column_names:  # a bad cell in some file, found by a Ray Data task
            raise DataError(block.column(ERROR)[0].as_py())
        blocks.append(block)
    whole = pa.concat_tables(blocks) if blocks else None
    if whole is None or whole.num_rows == 0:
        raise DataError("the files hold no rows left after preprocessing")
    splits = whole.column(SPLIT).to_numpy()
    names = [f.name for f in (*config.input_features, *config.output_features)]
    tables = {}
    for code, name in enumerate(("training", "validation", "test")):
        rows = np.flatnonzero(splits == code)
        if name != "training" and len(rows) == 0:
            continue  # an absent split, as with one table
        part = whole.take(pa.array(rows))
        columns = {}
        for feature in names:
            column = part.column(feature).combine_chunks()
            if pa.types.is_list(column.type):
                offsets = column.offsets.to_numpy().astype(np.int64)
                flat = column.values.to_numpy().astype(np.int32)[offsets[0]:offsets[-1]]
                columns[feature] = TokenIds(flat, offsets - offsets[0])
            elif pa.types.is_fixed_size_list(column.type):
                columns[feature] = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
            else:
                columns[feature] = column.to_numpy(zero_copy_only=False)
        tables[name] = Table(columns)
    return tables
