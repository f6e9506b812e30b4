"""Hostile configs and data: every mutated config is valid or a ConfigError; every bad table is a one-line error
naming the file and column (exit code 2, no traceback) or has documented handling."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunefork import config
from tunefork.config import ConfigError

VALID = {
    "input_features": [
        {"name": "review", "type": "text", "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": "m", "trainable": True},
         "preprocessing": {"max_sequence_length": 32}},
        {"name": "genre", "type": "category", "encoder": {"type": "dense", "embedding_size": 8}},
        {"name": "length", "type": "number", "preprocessing": {"normalization": "minmax"}},
    ],
    "output_features": [{"name": "sentiment", "type": "category", "loss": {"class_weights": [1, 2]}},
                        {"name": "score", "type": "number", "clip": [0, 5]}],
    "combiner": {"type": "concat", "num_fc_layers": 1, "output_size": 16},
    "trainer": {"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "optimizer": {"type": "adamw"},
                "learning_rate_scheduler": {"decay": "cosine", "warmup_fraction": 0.1}},
    "preprocessing": {"split": {"type": "random", "probabilities": [0.8, 0.1, 0.1]}},
    "defaults": {"category": {"preprocessing": {"most_common": 100}}},
}

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


PATHS = list(_paths(VALID))[1:]


def _get(node, path):
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated(draw):
    cfg = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        try:
            parent = _get(cfg, path[:-1])
            parent[path[-1]]  # noqa: B018 — the path may be gone after an earlier mutation
        except (KeyError, IndexError, TypeError):
            continue
        action = draw(st.sampled_from(["replace", "delete", "unknown_key", "wrap", "nest"]))
        key = path[-1]
        if action == "replace":
            parent[key] = draw(junk)
        elif action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "unknown_key" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(junk)
        elif action == "wrap":
            parent[key] = [parent[key]]
        elif action == "nest":
            parent[key] = {"value": parent[key]}
    return cfg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_config_is_valid_or_a_config_error(raw):
    try:
        loaded = config.load(raw)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message.split(" (and ")[0]
        return
    assert isinstance(loaded, config.Config)
    assert config.load(config.to_dict(loaded)) == loaded  # a valid result renders and re-loads to itself


@settings(max_examples=100, deadline=None)
@given(st.recursive(junk, lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=12))
def test_any_yaml_value_is_valid_or_a_config_error(raw):
    try:
        config.load(raw if isinstance(raw, dict) else {"input_features": raw, "output_features": raw})
    except ConfigError:
        pass


# ------------------------------------------------------------------------------------------------------ data

def _config_file(tmp_path, tiny_bert, outputs=None):
    import yaml

    cfg = {
        "input_features": [{"name": "review", "type": "text", "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)}},
                           {"name": "length", "type": "number"}],
        "output_features": outputs or [{"name": "sentiment", "type": "category"}],
        "trainer": {"epochs": 1, "batch_size": 8},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(tmp_path, config_path, data_path):
    """The CLI in-process (its error handling is what is under test; a subprocess would only add start-up time)."""
    import contextlib
    import io
    import types

    from tunefork import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["--quiet", "train", "-c", str(config_path), "--dataset", str(data_path),
                         "--output_directory", str(tmp_path / "runs")])
    return types.SimpleNamespace(returncode=code, stderr=err.getvalue())


def _frame(n=60):
    return tiny.sentiment_frame(n, seed=5)[["review", "length", "sentiment"]]


def _bad_encoding(path):
    path.write_bytes(b"review,length,sentiment\n" + "caf\xe9 great,3,positive\n".encode("latin-1") * 30)


def _ragged(path):
    path.write_text("review,length,sentiment\n" + "good film,3,positive\n" * 20 + "bad,2,negative,extra,fields\n")


def _write(frame):
    return lambda path: frame.to_csv(path, index=False)


def _with(column, value, n=60):
    frame = _frame(n).astype({column: object})
    frame.loc[3, column] = value
    return frame


BAD_DATA = [
    ("bad encoding", _bad_encoding, "not UTF-8"),
    ("ragged rows", _ragged, "cannot be parsed as CSV"),
    ("inf in a number column", _write(_with("length", math.inf)), "column 'length': contains NaN or infinity"),
    ("text in a number column", _write(_with("length", "seven")), "column 'length': 'seven' is not a number"),
    ("one class", _write(_frame().assign(sentiment="positive")), "'sentiment' has 1 class"),
    ("label column all empty", _write(_frame().assign(sentiment="")), "output column 'sentiment' is empty"),
    ("missing column", _write(_frame().drop(columns=["length"])), "column 'length' (feature 'length') not found"),
    ("empty file", lambda p: p.write_text(""), "the file is empty"),
    ("header only", lambda p: p.write_text("review,length,sentiment\n"), "no rows"),
]


@pytest.mark.parametrize("case, write, message", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_one_line_naming_file_and_column(case, write, message, tmp_path, tiny_bert):
    data = tmp_path / "data.csv"
    write(data)
    out = _train(tmp_path, _config_file(tmp_path, tiny_bert), data)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr
    assert message in lines[0]
    assert str(data) in lines[0] or "column" in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing half-written


HANDLED = [
    # (case, frame, what we check in the trained run)
    ("NaN in a number column is filled with fill_value", _with("length", np.nan), None),
    ("empty text is the empty string (special tokens only)", _with("review", ""), None),
    ("mixed types in a category column", _frame().assign(length=[1, "2", 3.0] * 20), None),
    ("a huge field is truncated at max_sequence_length", _with("review", "great " * 200_000), None),
]


@pytest.mark.parametrize("case, frame, _", HANDLED, ids=[c[0] for c in HANDLED])
def test_documented_handling(case, frame, _, tmp_path, tiny_bert):
    from tunefork import Model

    cfg = config.read_yaml(_config_file(tmp_path, tiny_bert))
    if "mixed types" in case:
        cfg["input_features"][1]["type"] = "category"
    result = Model(cfg, quiet=True).train(frame, skip_save_model=True)
    assert result.statistics["training"]["sentiment"]["loss"][0] > 0


def test_a_one_row_dataset_is_explained(tmp_path, tiny_bert):
    data = tmp_path / "one.csv"
    _frame(1).to_csv(data, index=False)
    out = _train(tmp_path, _config_file(tmp_path, tiny_bert), data)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_debug_shows_the_traceback(tmp_path, tiny_bert):
    data = tmp_path / "data.csv"
    data.write_text("")
    out = subprocess.run([sys.executable, "-m", "tunefork", "--debug", "train", "-c", str(_config_file(tmp_path, tiny_bert)),
                          "--dataset", str(data)], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" in out.stderr


# ------------------------------------------------------------------------------------------------- safe loading

def test_pickle_only_model_is_refused_unless_allowed(tmp_path, tiny_bert, monkeypatch):
    import shutil

    from transformers import BertModel

    from tunefork import Model, safety
    from tunefork.errors import TuneforkError

    pickled = tmp_path / "pickled-bert"
    shutil.copytree(tiny_bert, pickled)
    import torch

    torch.save(BertModel.from_pretrained(tiny_bert).state_dict(), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    cfg = config.read_yaml(_config_file(tmp_path, pickled))
    monkeypatch.setattr(safety, "_allowed", False)
    with pytest.raises(TuneforkError, match="only pickle files, which can run code"):
        Model(cfg, quiet=True).train(_frame(), skip_save_model=True)
    result = Model(cfg, quiet=True, allow_pickle=True).train(_frame(), skip_save_model=True)
    assert result.statistics["training"]["sentiment"]["loss"]


def test_a_model_folder_with_pickle_weights_is_refused(tmp_path):
    from tunefork import Model
    from tunefork.errors import ModelFolderError

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelFolderError, match="pickle weights"):
        Model.load(folder)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "x\\y"])
def test_feature_names_cannot_escape_the_model_folder(name):
    raw = copy.deepcopy(VALID)
    raw["input_features"][0]["name"] = name
    with pytest.raises(ConfigError, match="cannot be a folder name"):
        config.load(raw)


def test_trust_remote_code_is_off_and_recorded(tmp_path, tiny_bert):
    import json

    from tunefork import Model

    cfg = config.read_yaml(_config_file(tmp_path, tiny_bert))
    result = Model(cfg, quiet=True).train(_frame(), output_directory=tmp_path / "runs")
    description = json.loads((result.output_directory / "description.json").read_text())
    assert description["trust_remote_code"] == {"input_features.review.encoder": False}


# ------------------------------------------------------------ issue 18: data and labels (point 5), YAML limits (6)
# No silent reshaping: each case is an error naming the file / column / key, or a behaviour with one warning line
# and a field in the output. The models here read only a category and a number, so they train in a second.

def _tabular(**length_preprocessing) -> dict:
    return {"input_features": [{"name": "genre", "type": "category"},
                               {"name": "length", "type": "number", "preprocessing": length_preprocessing}],
            "output_features": [{"name": "sentiment", "type": "category"}],
            "trainer": {"epochs": 2, "batch_size": 8, "learning_rate": 0.05}}


def _tabular_frame(n=60):
    return tiny.sentiment_frame(n, seed=7)[["genre", "length", "sentiment"]]


def _warnings(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and needle in r.getMessage()]


def _cli(capsys, *argv):
    from tunefork import cli

    code = cli.main(["--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_h18c_unseen_labels_are_counted_and_left_out_of_every_metric(caplog):
    import pandas as pd

    from tunefork import Model
    from tunefork.data import read

    model = Model(_tabular(), quiet=True)
    model.train(_tabular_frame(), skip_save_model=True)
    known = _tabular_frame(40).reset_index(drop=True)
    odd = known.iloc[:3].assign(sentiment="neutral")
    caplog.clear()
    with_unseen, predictions = model._ready().evaluate(read.read(pd.concat([odd, known], ignore_index=True)))
    assert _warnings(caplog, "labels the model has no class for") == [
        "the dataset DataFrame: output 'sentiment': 3 of 43 rows have labels the model has no class for "
        "(e.g. 'neutral'); left out of every metric and the loss"]
    plain = model.evaluate(known)
    scores, reference = with_unseen["sentiment"], plain["sentiment"]
    assert scores.pop("unseen_labels") == 3 and scores.pop("unseen_label_examples") == ["neutral"]
    assert "unseen_labels" not in reference and "unseen_label_examples" not in reference
    assert scores["confusion_matrix"] == reference["confusion_matrix"]
    for metric in ("accuracy", "macro_f1", "loss"):
        assert scores[metric] == pytest.approx(reference[metric], rel=1e-5), metric
    # ROC-AUC over the known rows of this very evaluation (a tie between two scores may break either way when the
    # batches differ, so the other evaluation is no reference for it)
    from tunefork.features import metrics

    positive = model._ready().meta["outputs"]["sentiment"]["vocab"][1]
    kept = predictions.iloc[3:]
    assert scores["roc_auc"] == metrics.roc_auc(known["sentiment"].eq(positive).to_numpy(),
                                                kept[f"sentiment_probabilities_{positive}"].to_numpy())


def test_h18c_a_batch_of_only_unseen_labels_has_a_finite_zero_loss():
    import torch

    from tunefork.config.features import CategoryOutput
    from tunefork.features import category

    feature = CategoryOutput.model_validate({"name": "y", "type": "category"})
    logits = torch.randn(4, 2, requires_grad=True)
    loss = category.loss(feature, {"vocab": ["a", "b"]}, logits, torch.full((4,), -1))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_h18c_unseen_category_inputs_are_counted_in_one_warning(caplog):
    from tunefork import Model

    model = Model(_tabular(), quiet=True)
    model.train(_tabular_frame(), skip_save_model=True)
    rows = _tabular_frame(20).reset_index(drop=True)
    rows.loc[[1, 4, 9], "genre"] = "western"
    caplog.clear()
    predictions = model.predict(rows)
    assert len(predictions) == 20 and "row" not in predictions.columns
    assert _warnings(caplog, "not seen in training") == [
        "the dataset DataFrame: input 'genre': 3 of 20 rows have values not seen in training (e.g. 'western'); "
        "read as <UNK>"]


def test_h18c_drop_row_predictions_carry_the_input_row(tmp_path, capsys, caplog):
    import json

    import pandas as pd
    import yaml

    from tunefork import Model

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_tabular(missing_value_strategy="drop_row")))
    result = Model(str(config_path), quiet=True).train(_tabular_frame(), output_directory=tmp_path / "runs")
    data = tmp_path / "new.csv"
    rows = _tabular_frame(10).astype({"length": object})
    rows.loc[[2, 5], "length"] = ""
    rows.to_csv(data, index=False)
    caplog.clear()
    code, _, err = _cli(capsys, "predict", "-m", result.output_directory, "--dataset", data,
                        "--output_directory", tmp_path / "out")
    assert code == 0 and "Traceback" not in err
    assert _warnings(caplog, "rows dropped") == [
        f"{data}: 2 of 10 rows dropped for a missing value in 'length' (missing_value_strategy: drop_row); the "
        "predictions' `row` column is each kept row's 0-based position in the input"]
    written = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert written["row"].tolist() == [0, 1, 3, 4, 6, 7, 8, 9]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.csv"]
    code, _, err = _cli(capsys, "evaluate", "-m", result.output_directory, "--dataset", data,
                        "--output_directory", tmp_path / "eval")
    statistics = json.loads((tmp_path / "eval" / "test_statistics.json").read_text())
    assert code == 0 and statistics["combined"]["dropped_rows"] == 2


def test_h18c_numerically_equal_labels_are_one_class(tmp_path, caplog):
    import json

    from tunefork import Model

    frame = _tabular_frame()
    labels = [[0, 0.0, "0"][i % 3] if s == "negative" else [1, "1.0", 1.0][i % 3] for i, s in enumerate(frame["sentiment"])]
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps({"genre": g, "length": int(n), "sentiment": y}) + "\n"
                            for g, n, y in zip(frame["genre"], frame["length"], labels, strict=True)))
    caplog.clear()
    model = Model(_tabular(), quiet=True)
    model.train(str(data), skip_save_model=True)
    assert _warnings(caplog, "numerically equal") == [
        "output 'sentiment': numerically equal values read as one class (0, 0.0 → '0'; 1, 1.0 → '1')"]
    predictions = model.predict(str(data))
    assert set(predictions["sentiment_predictions"]) <= {"0", "1"}
    probabilities = {c for c in predictions.columns if c.startswith("sentiment_probabilities_")}
    assert probabilities == {"sentiment_probabilities_0", "sentiment_probabilities_1"}


def test_h18c_binary_labels_that_are_numerically_equal_are_one_value():
    import pandas as pd

    from tunefork.config.features import BinaryOutput
    from tunefork.features import binary

    feature = BinaryOutput.model_validate({"name": "y", "type": "binary"})
    meta = binary.fit(pd.Series([0, 0.0, "0", 1, "1.0"], dtype=object), feature, output=True)
    assert meta["str2bool"] == {"0": False, "1": True}
    assert binary.transform(pd.Series(["0.0", 1, 1.0], dtype=object), feature, meta).tolist() == [0.0, 1.0, 1.0]


def _one_line_error(tmp_path, tiny_bert, write, message):
    data = tmp_path / "data.csv"
    write(data)
    out = _train(tmp_path, _config_file(tmp_path, tiny_bert), data)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "runs").exists()
    return lines[0]


def test_h18c_numbers_whose_scaling_overflows_are_refused(tmp_path, tiny_bert):
    import warnings

    frame = _frame().assign(length=lambda f: f["length"] * 1e299)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow warning is no longer how it ends
        line = _one_line_error(tmp_path, tiny_bert, _write(frame), "number column 'length': values as large as")
    assert "overflow float64 while computing its zscore statistics" in line and str(tmp_path / "data.csv") in line


def test_h18c_a_duplicated_csv_column_is_an_error(tmp_path, tiny_bert):
    def write(path):
        frame = _frame()
        frame.insert(1, "length ", frame["length"])  # pandas would keep both apart only by renaming one
        path.write_text(frame.to_csv(index=False).replace("length ", "length", 1))

    line = _one_line_error(tmp_path, tiny_bert, write, "column 'length' appears twice in the header (columns 2 and 3)")
    assert line.startswith(f"error: {tmp_path / 'data.csv'}: ")


YAML_ERRORS = [
    ("duplicate key", "trainer:\n  epochs: 1\ninput_features: []\ntrainer:\n  epochs: 2\n",
     "config.yaml: line 4, column 1: duplicate key 'trainer' (first at line 1)"),
    ("alias bomb", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)),
     "config.yaml: expands to more than 100,000 values through its aliases"),
    ("recursive alias", "a: &a [*a]\n", "config.yaml: expands to more than 100,000 values"),
    ("too large", "# " + "x" * (1 << 20) + "\n", "config.yaml: 1.0 MiB is too large for a config file (at most 1 MiB)"),
    ("boolean batch size", None, "trainer.batch_size: expected a number, got a boolean"),
    ("boolean epochs", None, "trainer.epochs: expected a number, got a boolean"),
]


@pytest.mark.parametrize("case, text, message", YAML_ERRORS, ids=[c[0] for c in YAML_ERRORS])
@pytest.mark.parametrize("command", ["check-config", "render-config"])
def test_h18c_yaml_errors_are_one_line_in_milliseconds(case, text, message, command, tmp_path, capsys):
    import time

    import yaml

    path = tmp_path / "config.yaml"
    if text is None:
        raw = copy.deepcopy(VALID)
        raw["trainer"]["batch_size" if "batch" in case else "epochs"] = True
        text = yaml.safe_dump(raw)
    path.write_text(text)
    started = time.perf_counter()
    code, out, err = _cli(capsys, command, path)
    assert time.perf_counter() - started < 2.0
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


@pytest.mark.parametrize("key, value", [("batch_size", "auto"), ("batch_size", 4), ("eval_batch_size", None),
                                        ("learning_rate", 1), ("epochs", 3)])
def test_h18c_numbers_and_their_literals_still_validate(key, value):
    raw = copy.deepcopy(VALID)
    raw["trainer"][key] = value
    loaded = config.load(raw)
    assert getattr(loaded.trainer, key) == value and type(getattr(loaded.trainer, key)) is not bool


def test_h18c_yaml_merge_keys_may_override_and_booleans_stay_booleans(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("base: &base {epochs: 1, batch_size: 8}\ntrainer:\n  <<: *base\n  epochs: 2\n")
    assert config.read_yaml(path)["trainer"] == {"epochs": 2, "batch_size": 8}
    raw = copy.deepcopy(VALID)
    raw["input_features"][0]["encoder"]["trainable"] = False
    assert config.load(raw).input_features[0].encoder.trainable is False


def test_h18c_a_validation_split_with_unseen_values_trains_and_says_so(caplog):
    from tunefork import Model

    validation = _tabular_frame(20).reset_index(drop=True)
    validation.loc[[0, 1], "sentiment"] = "neutral"
    validation.loc[[2], "genre"] = "western"
    caplog.clear()
    result = Model(_tabular(), quiet=True).train(training_set=_tabular_frame(), validation_set=validation,
                                                 skip_save_model=True)
    assert len(_warnings(caplog, "labels the model has no class for")) == 1
    assert len(_warnings(caplog, "not seen in training")) == 1
    scores = result.statistics["validation"]["sentiment"]
    assert set(scores["unseen_labels"]) == {2} and all(math.isfinite(v) for v in scores["loss"])
    assert "unseen_labels" not in result.statistics["training"]["sentiment"]
