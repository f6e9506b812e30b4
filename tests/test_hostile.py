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


# --------------------------------------------------------------- issue 18, points 3 and 4: divergence, resume config
# A diverged run fails in one line and writes no model; non-finite config numbers are config errors; predict and serve
# label no row from NaN scores; a resume refuses a config that changes the arithmetic of the resumed steps.

NUMBERS = {"input_features": [{"name": "length", "type": "number"}],
           "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number", "clip": [0, 5]},
                               {"name": "recommended", "type": "binary"}],
           "trainer": {"epochs": 2, "batch_size": 8, "steps_per_checkpoint": 2, "early_stop": -1}}


def _cli(*args):
    """The CLI in-process: (exit code, stderr)."""
    import contextlib
    import io

    from tunefork import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["--quiet", *args])
    return code, err.getvalue()


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


def _yaml(path, cfg):
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_diverged_run_fails_keeping_its_checkpoints(tmp_path, tiny_bert):
    cfg = config.read_yaml(_config_file(tmp_path, tiny_bert))
    cfg["input_features"][0]["encoder"]["trainable"] = True
    cfg["trainer"].update(learning_rate=1.0e9, steps_per_checkpoint=1)  # a checkpoint after step 1, NaN at step 2
    data = tmp_path / "data.csv"
    _frame().to_csv(data, index=False)
    code, stderr = _cli("train", "-c", str(_yaml(tmp_path / "config.yaml", cfg)), "--dataset", str(data),
                        "--output_directory", str(tmp_path / "runs"))
    line = _one_error_line(stderr)
    assert code == 2
    assert "training diverged at step 2: the loss is nan (the last finite loss was " in line and "at step 1)" in line
    assert "lower trainer.learning_rate (now 1e+09)" in line and "trainer.gradient_clipping" in line
    run = tmp_path / "runs" / "experiment_run"
    # step 1's weights already score NaN, so no evaluation was an improvement: the checkpoint is called the last one
    assert line.endswith(f"; no model was saved; its last checkpoint (step-1; no evaluation had a finite score) is kept "
                         f"in {run / 'checkpoints'}") or "best checkpoint so far (step-1: " in line
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "description.json", "resolved_config.yaml"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["pointer.json", "step-1"]


def test_a_run_that_diverges_before_any_checkpoint_leaves_nothing(tmp_path):
    from tunefork import Model
    from tunefork.errors import DivergedError

    cfg = {**NUMBERS, "trainer": {**NUMBERS["trainer"], "learning_rate": 1.0e30, "steps_per_checkpoint": 0}}
    with pytest.raises(DivergedError, match=r"at step 2: the loss is inf .*; no checkpoint had been written, so nothing "
                                            r"was saved$"):
        Model(cfg, quiet=True).train(tiny.sentiment_frame(60, seed=5), output_directory=tmp_path / "runs")
    assert not any((tmp_path / "runs").iterdir())  # the run directory it had created is gone


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_config_numbers_are_config_errors(tmp_path, value):
    path = tmp_path / "config.yaml"
    path.write_text(f"input_features: [{{name: length, type: number}}]\noutput_features: [{{name: score, type: number}}]\n"
                    f"trainer: {{learning_rate: {value}}}\n")
    code, stderr = _cli("check-config", str(path))
    assert code == 2
    assert _one_error_line(stderr).startswith("error: trainer.learning_rate: Input should be a finite number (got ")


@pytest.fixture()
def overflowing_model(tmp_path):
    """A trained number → (category, number, binary) model whose heads are scaled by 1e30: a `length` of 1e10
    overflows float32 to an infinite logit (NaN probabilities), while ordinary lengths still score."""
    from safetensors.torch import load_file, save_file

    from tunefork import Model

    result = Model(NUMBERS, quiet=True).train(tiny.sentiment_frame(60, seed=5), output_directory=tmp_path / "runs")
    weights_file = result.output_directory / "model" / "model.safetensors"
    weights = load_file(str(weights_file))
    save_file({k: v * 1e30 if k.endswith(".weight") else v for k, v in weights.items()}, str(weights_file))
    return result.output_directory / "model"


def test_predict_labels_no_row_from_nan_scores(tmp_path, overflowing_model):
    import pandas as pd

    data = tmp_path / "new.csv"
    pd.DataFrame({"length": [5.0, 1e10, 9.0]}).to_csv(data, index=False)
    code, stderr = _cli("predict", "-m", str(overflowing_model), "--dataset", str(data), "--output_directory",
                        str(tmp_path / "out"))
    assert code == 0 and "Traceback" not in stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["predictions.csv"]
    predicted = pd.read_csv(tmp_path / "out" / "predictions.csv")
    for output in ("sentiment", "score", "recommended"):
        assert predicted[f"{output}_predictions"].isna().tolist() == [False, True, False], output
        assert predicted[f"{output}_error"].isna().tolist() == [True, False, True], output
        assert "scores for this row are not finite" in predicted.loc[1, f"{output}_error"]


def test_serve_labels_no_row_from_nan_scores(overflowing_model):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tunefork import serve

    client = TestClient(serve.app(overflowing_model))
    answer = client.post("/predict", json={"length": 1e10})
    assert answer.status_code == 200
    body = answer.json()
    for output in ("sentiment", "score", "recommended"):
        assert body[f"{output}_predictions"] is None and "not finite" in body[f"{output}_error"]
    fine = client.post("/predict", json={"length": 7}).json()
    assert fine["sentiment_predictions"] in ("positive", "negative") and "sentiment_error" not in fine


@pytest.fixture()
def stopped_run(tmp_path, monkeypatch):
    """A run stopped after its checkpoints (as if killed before it finished): (run directory, data file)."""
    from tunefork import Model
    from tunefork.rundir import RunDirectory

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    data = tmp_path / "data.csv"
    tiny.sentiment_frame(60, seed=5).to_csv(data, index=False)
    with monkeypatch.context() as patch:
        patch.setattr(RunDirectory, "finish", stop)
        with pytest.raises(Stop):
            Model(NUMBERS, quiet=True).train(str(data), output_directory=tmp_path / "runs")
    run = tmp_path / "runs" / "experiment_run"
    assert (run / "checkpoints" / "pointer.json").is_file() and not (run / "model").exists()
    return run, data


def test_resume_refuses_a_different_learning_rate(tmp_path, stopped_run):
    import json

    run, data = stopped_run
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    changed = {**NUMBERS, "trainer": {**NUMBERS["trainer"], "learning_rate": 0.1, "epochs": 3}}
    code, stderr = _cli("train", "-c", str(_yaml(tmp_path / "other.yaml", changed)), "--dataset", str(data),
                        "--model_resume_path", str(run))
    line = _one_error_line(stderr)
    assert code == 2
    assert f"error: {run}: the config differs from the run being resumed in trainer.learning_rate (0.001 → 0.1); " in line
    assert "trainer.epochs" not in line.split("; only")[0]  # growing epochs alone would be accepted
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing written
    assert "resumed" not in json.loads((run / "description.json").read_text())


def test_resume_refuses_more_epochs_under_a_decaying_schedule(tmp_path, stopped_run):
    run, data = stopped_run
    # the run's own schedule is constant; a decay spread over the new total is itself a change, and named as one
    changed = {**NUMBERS, "trainer": {**NUMBERS["trainer"], "epochs": 3, "learning_rate_scheduler": {"decay": "cosine"}}}
    code, stderr = _cli("train", "-c", str(_yaml(tmp_path / "other.yaml", changed)), "--dataset", str(data),
                        "--model_resume_path", str(run))
    line = _one_error_line(stderr)
    assert code == 2
    assert ("trainer.epochs (2 → 3: trainer.learning_rate_scheduler.decay: cosine spans the total steps); "
            "trainer.learning_rate_scheduler.decay (null → \"cosine\")") in line


def test_resume_with_more_epochs_continues_and_records_it(tmp_path, stopped_run):
    import json

    import yaml

    run, data = stopped_run
    more = {**NUMBERS, "trainer": {**NUMBERS["trainer"], "epochs": 3, "early_stop": 10}}
    code, stderr = _cli("train", "-c", str(_yaml(tmp_path / "more.yaml", more)), "--dataset", str(data),
                        "--model_resume_path", str(run))
    assert code == 0, stderr[-2000:]
    assert (run / "model").is_dir() and not (run / "checkpoints").exists()
    statistics = json.loads((run / "training_statistics.json").read_text())
    assert statistics["evaluations"][-1]["epoch"] == 3
    description = json.loads((run / "description.json").read_text())
    assert description["config"]["trainer"]["epochs"] == 3
    assert description["resumed"] == [{"changed": {"trainer.early_stop": {"from": -1, "to": 10},
                                                   "trainer.epochs": {"from": 2, "to": 3}}}]
    assert yaml.safe_load((run / "resolved_config.yaml").read_text())["config"]["trainer"]["epochs"] == 3
    saved = json.loads((run / "model" / "model_hyperparameters.json").read_text())
    assert saved["trainer"]["epochs"] == 3
