"""`tunefork init-config`: column types inferred from data, leaks left out, and configs that train as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny
import yaml

from tunefork.errors import DataError
from tunefork.init_config import determines_target, infer, infer_column, infer_target, init_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _frame(n: int = 300) -> pd.DataFrame:
    frame = tiny.sentiment_frame(n, seed=5)
    rng = np.random.default_rng(0)
    frame["row_id"] = np.arange(n)
    frame["code"] = [f"x{i:05d}" for i in rng.permutation(n)]
    frame["constant"] = "same"
    frame["rating"] = rng.integers(1, 6, n)
    frame["weight"] = rng.normal(70, 10, n).round(2)
    frame["fine_sentiment"] = frame["sentiment"] + ":" + rng.choice(["mild", "strong"], n)  # finer than the target
    return frame


def test_each_column_gets_the_type_its_values_suggest():
    frame = _frame()
    types = {c: infer_column(frame[c]).type for c in frame.columns}
    assert types == {"review": "text", "sentiment": "binary", "score": "number", "genre": "category", "length": "number",
                     "recommended": "binary", "row_id": None, "code": None, "constant": None, "rating": "category",
                     "weight": "number", "fine_sentiment": "category"}
    assert "identifier" in infer_column(frame["code"]).reason and "row counter" in infer_column(frame["row_id"]).reason
    assert infer_target(frame["genre"]).type == "category" and infer_target(frame["score"]).type == "number"
    assert infer_target(frame["rating"]).type == "category"  # five integer classes


def test_a_column_that_determines_the_target_is_left_out_with_the_reason(tiny_bert):
    frame = _frame()
    config, columns = infer(frame, "sentiment", str(tiny_bert))
    names = [f["name"] for f in config["input_features"]]
    assert "fine_sentiment" not in names and "recommended" not in names  # yes/no is the label under another name
    reason = {c.name: c.reason for c in columns}
    assert "determines 'sentiment'" in reason["fine_sentiment"] and "leak" in reason["fine_sentiment"]
    assert names == ["review", "score", "genre", "length", "rating", "weight"]
    # a coarser column cannot give a finer target away
    assert determines_target(frame["sentiment"], frame["fine_sentiment"], "category") is None
    # for a number target: a column whose groups explain the variance is a leak, an unrelated one is not
    bucket = (frame["score"] * 10).round().astype(int).astype(str)
    assert determines_target(bucket, frame["score"], "number") is not None
    assert determines_target(frame["genre"], frame["score"], "number") is None


def test_bad_targets_are_one_clear_error(tmp_path, capsys):
    from tunefork.cli import main

    frame = _frame(60)
    with pytest.raises(DataError, match="target column 'nope' not found"):
        infer(frame, "nope")
    with pytest.raises(DataError, match="free text"):
        infer(frame, "review")
    with pytest.raises(DataError, match="one value|1 distinct"):
        infer(frame, "constant")
    frame.to_csv(tmp_path / "data.csv", index=False)
    assert main(["init-config", "--dataset", str(tmp_path / "data.csv"), "--target", "missing"]) == 2
    assert "target column 'missing' not found" in capsys.readouterr().err


def test_the_written_config_validates_and_trains_as_is(tiny_bert, tmp_path):
    from tunefork import config as config_mod
    from tunefork.cli import main

    _frame(160).to_csv(tmp_path / "data.csv", index=False)
    assert main(["init-config", "--dataset", str(tmp_path / "data.csv"), "--target", "sentiment", "--model", str(tiny_bert),
                 "--output", str(tmp_path / "config.yaml")]) == 0
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# Written by `tunefork init-config`") and "fine_sentiment" in text
    assert config_mod.load(tmp_path / "config.yaml").output_features[0].type == "binary"
    assert main(["--quiet", "train", "--config", str(tmp_path / "config.yaml"), "--dataset", str(tmp_path / "data.csv"),
                 "--output_directory", str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "experiment_run" / "model" / "model.safetensors").is_file()


def test_without_model_the_default_is_minilm(tmp_path):
    _frame(40).to_csv(tmp_path / "data.csv", index=False)
    config = yaml.safe_load(init_config(tmp_path / "data.csv", "sentiment"))
    assert config["input_features"][0]["encoder"]["pretrained_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"


# The shared benchmark datasets: typed from the whole file, then trained on its first rows (copied to a temp folder,
# never into the repository).
SHARED_CASES = [
    ("sst2", "label", {"sentence": "text"}, "binary", []),
    ("trec", "label", {"question": "text"}, "category", ["fine_label"]),
    ("stsb", "score", {"sentence1": "text", "sentence2": "text", "genre": "category", "source": "category",
                       "year": "category"}, "number", []),
]


@pytest.mark.parametrize("name, target, inputs, output, left_out", SHARED_CASES, ids=[c[0] for c in SHARED_CASES])
def test_shared_datasets_get_configs_that_train_without_edits(tiny_bert, tmp_path, name, target, inputs, output, left_out):
    from tunefork.cli import main

    path = SHARED / name / "train.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found: the shared datasets are not next to this checkout")
    config = yaml.safe_load(init_config(path, target, str(tiny_bert), tmp_path / "config.yaml"))
    assert {f["name"]: f["type"] for f in config["input_features"]} == inputs
    assert config["output_features"] == [{"name": target, "type": output}]
    text = (tmp_path / "config.yaml").read_text()
    for column in left_out:
        assert f"#   {column}" in text and "determines" in text
    pd.read_csv(path).head(150).to_csv(tmp_path / "head.csv", index=False)
    assert main(["--quiet", "train", "-c", str(tmp_path / "config.yaml"), "--dataset", str(tmp_path / "head.csv"),
                 "--output_directory", str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "experiment_run" / "report.html").is_file()
