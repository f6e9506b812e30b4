"""Reading tables in every supported format, the errors that name the file, fingerprints, the preprocessing cache."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from tiny import sentiment_frame

from tunefork import config
from tunefork.data import read
from tunefork.data.tensors import Table, TokenIds
from tunefork.errors import DataError
from tunefork.features import pipeline

WRITERS = {
    "csv": lambda f, p: f.to_csv(p, index=False),
    "tsv": lambda f, p: f.to_csv(p, sep="\t", index=False),
    "json": lambda f, p: f.to_json(p, orient="records"),
    "jsonl": lambda f, p: f.to_json(p, orient="records", lines=True),
    "parquet": lambda f, p: f.to_parquet(p, index=False),
}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return sentiment_frame(40, seed=5)


@pytest.fixture(scope="module")
def files(frame, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("formats")
    paths = {}
    for kind, write in WRITERS.items():
        paths[kind] = folder / f"reviews.{kind}"
        write(frame, paths[kind])
    return paths


@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_format_reads_to_the_same_table(frame, files, kind):
    got = read.read(files[kind])
    pd.testing.assert_frame_equal(got, frame)
    assert got.attrs["source"] == str(files[kind])
    assert read.fingerprint(got) == read.fingerprint(frame)


def test_path_given_as_string_and_uppercase_extension(frame, files, tmp_path):
    upper = tmp_path / "REVIEWS.CSV"
    shutil.copy(files["csv"], upper)
    pd.testing.assert_frame_equal(read.read(str(upper)), frame)


def test_dataframe_and_arrow_table(frame):
    import pyarrow as pa

    shuffled_index = frame.set_axis(range(100, 100 + len(frame)))
    got = read.read(shuffled_index)
    assert got.index.tolist() == list(range(len(frame)))  # reset: predictions line up with row positions
    assert got.attrs["source"] == "the dataset DataFrame"
    pd.testing.assert_frame_equal(read.read(pa.Table.from_pandas(frame, preserve_index=False)), frame)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "dataset file not found"),
        ("empty.csv", b"", "the file is empty"),
        ("header_only.csv", b"review,sentiment\n", "no rows"),
        ("blank_lines.csv", b"\n\n", "the file has no columns"),
        ("table.xlsx", b"PK", "unknown file type '.xlsx' (use one of: .csv, .json, .jsonl, .parquet, .pq, .tsv, or name the format with data_format)"),
        ("latin1.csv", "review,sentiment\ncafé,positive\n".encode("latin-1"), "not UTF-8 text (line 2); re-save the file as UTF-8"),
        ("latin1.jsonl", '{"review": "ok"}\n{"review": "café"}\n'.encode("latin-1"), "not UTF-8 text (line 2)"),
        ("ragged.csv", b"a,b\n1,2\n3,4,5\n", "cannot be parsed as CSV (Error tokenizing data. C error: Expected 2 fields in line 3, saw 3)"),
        ("broken.json", b"{not json", "cannot be read ("),
        ("broken.parquet", b"not parquet", "cannot be read ("),
    ],
)
def test_read_errors_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        read.read(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


def test_reads_the_shared_sst2_splits(sst2_dir):
    dev = read.read(sst2_dir / "dev.csv")
    assert list(dev.columns) == ["sentence", "label"]
    assert len(dev) == 872
    assert set(dev["label"]) == {"negative", "positive"}
    assert dev.attrs["source"] == str(sst2_dir / "dev.csv")


def test_empty_dataframe_is_an_error():
    with pytest.raises(DataError, match="the training set DataFrame: no rows"):
        read.read(pd.DataFrame({"a": []}), "training set")


def test_fingerprint_follows_content(frame):
    base = read.fingerprint(frame)
    assert read.fingerprint(frame.copy()) == base
    changed = frame.copy()
    changed.loc[3, "review"] += " !"
    renamed = frame.rename(columns={"review": "text"})
    one_less = frame.iloc[:-1]
    reordered = frame.iloc[::-1].reset_index(drop=True)
    score = frame.assign(score=frame["score"] + 1e-9)
    fingerprints = [read.fingerprint(f) for f in (changed, renamed, one_less, reordered, score)]
    assert base not in fingerprints
    assert len(set(fingerprints)) == len(fingerprints)


# ---------------------------------------------------------------------------------------------- the cache


def _config(model, max_length: int = 16) -> config.Config:
    return config.load({
        "input_features": [
            {"name": "review", "type": "text", "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(model)},
             "preprocessing": {"max_sequence_length": max_length}},
            {"name": "genre", "type": "category"},
            {"name": "length", "type": "number"},
        ],
        "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"}],
    })


def _splits(frame):
    return {"training": frame.iloc[:30].reset_index(drop=True), "validation": frame.iloc[30:].reset_index(drop=True)}


def _same_tables(a: dict[str, Table], b: dict[str, Table]) -> None:
    assert a.keys() == b.keys()
    for split in a:
        assert a[split].columns.keys() == b[split].columns.keys()
        for name, column in a[split].columns.items():
            other = b[split][name]
            if isinstance(column, TokenIds):
                np.testing.assert_array_equal(column.flat, other.flat)
                np.testing.assert_array_equal(column.offsets, other.offsets)
            else:
                assert column.dtype == other.dtype
                np.testing.assert_array_equal(column, other)


def test_preprocessing_cache_hits_then_misses_on_every_change(tiny_bert, frame, tmp_path):
    cfg = _config(tiny_bert)
    toks = pipeline.tokenizers(cfg)
    meta, tables, hit = pipeline.preprocess(cfg, _splits(frame), 42, tmp_path, toks)
    assert not hit
    assert len(list((tmp_path / "preprocessed").iterdir())) == 1
    meta2, tables2, hit2 = pipeline.preprocess(cfg, _splits(frame), 42, tmp_path, toks)
    assert hit2
    assert meta2 == meta
    _same_tables(tables, tables2)
    assert tables2["training"]["review"].lengths.max() <= 16

    # a copy of the same model folder elsewhere: the key is the tokenizer's content, not its path
    copy = tmp_path / "copy-of-bert"
    shutil.copytree(tiny_bert, copy)
    assert pipeline.preprocess(_config(copy), _splits(frame), 42, tmp_path, pipeline.tokenizers(_config(copy)))[2]

    # any change misses
    longer = _config(tiny_bert, max_length=8)
    assert not pipeline.preprocess(longer, _splits(frame), 42, tmp_path, pipeline.tokenizers(longer))[2]
    edited = frame.copy()
    edited.loc[0, "review"] = "an entirely different review"
    assert not pipeline.preprocess(cfg, _splits(edited), 42, tmp_path, toks)[2]
    assert not pipeline.preprocess(cfg, _splits(frame), 7, tmp_path, toks)[2]
    from transformers import AutoTokenizer

    grown = tmp_path / "bert-with-a-new-token"
    shutil.copytree(tiny_bert, grown)
    tokenizer = AutoTokenizer.from_pretrained(grown)
    tokenizer.add_tokens(["zzzyzzy"])
    tokenizer.save_pretrained(grown)
    assert not pipeline.preprocess(_config(grown), _splits(frame), 42, tmp_path, pipeline.tokenizers(_config(grown)))[2]
    assert len(list((tmp_path / "preprocessed").iterdir())) == 5


def test_tokenizer_identity_holds_until_the_tokenizer_changes(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    first = pipeline.tokenizer_identity(tokenizer)
    assert pipeline.tokenizer_identity(tokenizer) == first == pipeline.tokenizer_identity(AutoTokenizer.from_pretrained(tiny_bert))
    tokenizer.add_tokens(["zzzyzzy"])  # the same object, grown: a new identity
    grown = pipeline.tokenizer_identity(tokenizer)
    assert grown != first
    tokenizer.padding_side = "left"
    assert pipeline.tokenizer_identity(tokenizer) not in (first, grown)


def test_tokenizer_identity_ignores_call_time_truncation_and_padding_and_leaves_them_as_they_were(tiny_bert):
    from transformers import AutoTokenizer

    fresh = pipeline.tokenizer_identity(AutoTokenizer.from_pretrained(tiny_bert))
    used = AutoTokenizer.from_pretrained(tiny_bert)
    used(["a b c d e f", "g"], truncation=True, max_length=4, padding="max_length")
    state = (used.backend_tokenizer.truncation, used.backend_tokenizer.padding)
    assert state[0] is not None and state[1] is not None
    assert pipeline.tokenizer_identity(used) == fresh
    assert (used.backend_tokenizer.truncation, used.backend_tokenizer.padding) == state


def test_no_cache_dir_means_no_cache(tiny_bert, frame):
    cfg = _config(tiny_bert)
    toks = pipeline.tokenizers(cfg)
    assert not pipeline.preprocess(cfg, _splits(frame), 42, None, toks)[2]
    assert not pipeline.preprocess(cfg, _splits(frame), 42, None, toks)[2]


def test_incomplete_cache_entry_is_recomputed(tiny_bert, frame, tmp_path):
    cfg = _config(tiny_bert)
    toks = pipeline.tokenizers(cfg)
    meta, tables, _ = pipeline.preprocess(cfg, _splits(frame), 42, tmp_path, toks)
    entry = next((tmp_path / "preprocessed").iterdir())
    (entry / "metadata.json").unlink()  # a run killed before the last write
    meta2, tables2, hit = pipeline.preprocess(cfg, _splits(frame), 42, tmp_path, toks)
    assert not hit and meta2 == meta
    _same_tables(tables, tables2)


def test_missing_column_names_file_feature_and_columns(tiny_bert, frame):
    cfg = _config(tiny_bert)
    training = frame.drop(columns=["genre"])
    training.attrs["source"] = "train.csv"
    with pytest.raises(DataError) as caught:
        pipeline.check_columns(cfg, {"training": training}, with_outputs=True)
    assert str(caught.value) == (
        "train.csv: column 'genre' (feature 'genre') not found; columns are: review, sentiment, score, length, recommended"
    )


def test_table_round_trips_through_npz(tmp_path):
    table = Table({"ids": TokenIds.from_rows([[1, 2], [3], [4, 5, 6]]), "x": np.array([0.5, 1.5, 2.5], dtype=np.float32)})
    table.save(tmp_path / "t.npz")
    again = Table.load(tmp_path / "t.npz")
    assert len(again) == 3
    assert [again["ids"].row(i).tolist() for i in range(3)] == [[1, 2], [3], [4, 5, 6]]
    assert again["x"].tolist() == [0.5, 1.5, 2.5]
    with pytest.raises(ValueError, match="columns of different lengths"):
        Table({"a": np.zeros(2), "b": np.zeros(3)})
