"""The command line: instant help, config commands, train / predict / evaluate / experiment, and user errors as one
line with a non-zero exit — no traceback, no run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny import sentiment_frame

from tunefork import cli, config

ROOT = Path(__file__).resolve().parents[1]


def tunefork(*args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunefork", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def base_config(model: Path) -> dict:
    return {
        "input_features": [
            {"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 24},
             "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(model), "trainable": True}},
            {"name": "genre", "type": "category"},
            {"name": "length", "type": "number"},
        ],
        "output_features": [{"name": "sentiment", "type": "category"}],
        "trainer": {"epochs": 3, "batch_size": 8, "learning_rate": 0.003},
    }


@pytest.fixture(scope="module")
def workspace(tiny_bert, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "config.yaml").write_text(yaml.safe_dump(base_config(tiny_bert)))
    sentiment_frame(200, seed=0).to_csv(folder / "train.csv", index=False)
    sentiment_frame(60, seed=11).to_csv(folder / "holdout.csv", index=False)
    sentiment_frame(60, seed=11).to_parquet(folder / "holdout.parquet", index=False)
    return folder


@pytest.fixture(scope="module")
def trained_run(workspace) -> Path:
    done = tunefork("train", "-c", "config.yaml", "--dataset", "train.csv", "--output_directory", "results",
                    "--experiment_name", "cli", "--model_name", "bert", cwd=workspace)
    assert done.returncode == 0, done.stderr
    return workspace / "results" / "cli_bert"


# ------------------------------------------------------------------------------------------------ instant ones


def test_help_is_instant_and_imports_nothing_heavy(tmp_path):
    tunefork("--help", cwd=tmp_path)  # warm the file cache once
    start = time.perf_counter()
    done = tunefork("--help", cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert done.returncode == 0
    for command in cli.COMMANDS:
        assert command in done.stdout
    assert seconds < 1.0
    code = ("import sys\nfrom tunefork.cli import main\ntry:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'ray', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_no_command_prints_help_and_fails(tmp_path):
    done = tunefork(cwd=tmp_path)
    assert done.returncode == 2 and "COMMAND" in done.stdout


def test_check_config(workspace):
    done = tunefork("check-config", "config.yaml", cwd=workspace)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "config.yaml: valid", "")


def test_render_config_reloads_to_the_same_config(workspace, tmp_path):
    done = tunefork("render-config", "config.yaml", cwd=workspace)
    assert done.returncode == 0
    rendered = yaml.safe_load(done.stdout)
    assert rendered["trainer"]["early_stop"] == 5  # defaults are filled in
    assert rendered["input_features"][0]["encoder"]["reduce_output"] == "auto"
    assert config.load(rendered) == config.load(workspace / "config.yaml")


def test_render_config_translates_ludwig_shorthand(tmp_path):
    (tmp_path / "ludwig.yaml").write_text(
        "ludwig_version: 0.10.1\ninput_features:\n  - {name: text, type: text, encoder: bert}\n"
        "output_features:\n  - {name: label, type: category}\ntrainer:\n  optimizer: adamw\n")
    done = tunefork("render-config", "ludwig.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    assert rendered["input_features"][0]["encoder"]["pretrained_model_name_or_path"] == "bert-base-uncased"
    assert rendered["trainer"]["optimizer"]["type"] == "adamw"
    assert "ludwig_version" not in rendered


# ------------------------------------------------------------------------------------------------ real runs


def test_train_writes_a_run_directory(trained_run):
    for name in ("model/model.safetensors", "training_statistics.json", "efficiency.json", "resolved_config.yaml",
                 "description.json"):
        assert (trained_run / name).is_file()
    assert not list(trained_run.parent.glob(".*"))
    statistics = json.loads((trained_run / "training_statistics.json").read_text())
    assert len(statistics["validation"]["sentiment"]["accuracy"]) == 3


@pytest.mark.parametrize(("dataset", "output_format"), [("holdout.csv", "csv"), ("holdout.parquet", "parquet")])
def test_predict(trained_run, workspace, tmp_path, dataset, output_format):
    done = tunefork("predict", "-m", trained_run, "--dataset", workspace / dataset, "--output_directory", tmp_path,
                    "--output_format", output_format, cwd=workspace)
    assert done.returncode == 0, done.stderr
    path = tmp_path / f"predictions.{output_format}"
    assert done.stdout.strip() == f"60 predictions written to {path}"
    frame = pd.read_csv(path) if output_format == "csv" else pd.read_parquet(path)
    assert list(frame.columns) == ["sentiment_predictions", "sentiment_probabilities_negative",
                                   "sentiment_probabilities_positive", "sentiment_probability"]
    assert len(frame) == 60
    truth = pd.read_csv(workspace / "holdout.csv")["sentiment"]
    assert (frame["sentiment_predictions"] == truth).mean() > 0.8


def test_evaluate_writes_test_statistics(trained_run, workspace, tmp_path):
    done = tunefork("evaluate", "-m", trained_run, "--dataset", "holdout.csv", "--output_directory", tmp_path, cwd=workspace)
    assert done.returncode == 0, done.stderr
    statistics = json.loads((tmp_path / "test_statistics.json").read_text())
    sentiment = statistics["sentiment"]
    assert {"loss", "accuracy", "macro_f1", "roc_auc", "confusion_matrix"} <= set(sentiment)
    assert sum(map(sum, sentiment["confusion_matrix"])) == 60
    diagonal = sentiment["confusion_matrix"][0][0] + sentiment["confusion_matrix"][1][1]
    assert sentiment["accuracy"] == pytest.approx(diagonal / 60)
    assert sentiment["accuracy"] > 0.8 and sentiment["roc_auc"] > 0.8
    assert str(tmp_path / "test_statistics.json") in done.stdout


def test_experiment_trains_and_scores_the_test_split(workspace, tmp_path):
    tabular = {"input_features": [{"name": "genre", "type": "category"}, {"name": "score", "type": "number"}],
               "output_features": [{"name": "sentiment", "type": "category"}],
               "trainer": {"epochs": 5, "batch_size": 16, "learning_rate": 0.01}}
    (tmp_path / "tabular.yaml").write_text(yaml.safe_dump(tabular))
    done = tunefork("experiment", "-c", tmp_path / "tabular.yaml", "--training_set", "train.csv", "--test_set", "holdout.csv",
                    "--output_directory", tmp_path, "--quiet", cwd=workspace)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "experiment_run"
    statistics = json.loads((run / "test_statistics.json").read_text())
    assert sum(map(sum, statistics["sentiment"]["confusion_matrix"])) == 60
    assert statistics["sentiment"]["accuracy"] > 0.9  # the score column gives the sentiment away
    predictions = pd.read_csv(run / "test_predictions.csv")
    assert len(predictions) == 60 and "sentiment_predictions" in predictions
    assert done.stderr == ""  # --quiet after the command is honoured


# ------------------------------------------------------------------------------------------------ user errors


def _data_with(workspace: Path, name: str, change) -> Path:
    frame = pd.read_csv(workspace / "train.csv")
    path = workspace / name
    change(frame).to_csv(path, index=False)
    return path


def _bad_config(workspace: Path, name: str, change) -> Path:
    raw = yaml.safe_load((workspace / "config.yaml").read_text())
    change(raw)
    path = workspace / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _text_in_row_57(frame):
    frame["length"] = frame["length"].astype(object)
    frame.loc[57, "length"] = "twelve"
    return frame


def _setup_error(case: str, workspace: Path) -> tuple[list, str]:
    """(command line, the expected error line) for one kind of user mistake."""
    ws = workspace
    train = ["train", "-c", ws / "config.yaml", "--dataset"]
    if case == "missing column":
        path = _data_with(ws, "no_genre.csv", lambda f: f.drop(columns=["genre"]))
        return [*train, path], f"error: {path}: column 'genre' (feature 'genre') not found; columns are: review, sentiment, score, length, recommended"
    if case == "empty file":
        (ws / "empty.csv").write_text("")
        return [*train, ws / "empty.csv"], f"error: {ws / 'empty.csv'}: the file is empty"
    if case == "not UTF-8":
        (ws / "latin1.csv").write_bytes("review,sentiment\nok,positive\ncafé,negative\n".encode("latin-1"))
        return [*train, ws / "latin1.csv"], f"error: {ws / 'latin1.csv'}: not UTF-8 text (line 3); re-save the file as UTF-8"
    if case == "corrupt parquet":
        (ws / "corrupt.parquet").write_bytes(b"PAR1 this is not really parquet")
        return [*train, ws / "corrupt.parquet"], f"error: {ws / 'corrupt.parquet'}: cannot be read ("
    if case == "missing file":
        return [*train, ws / "nope.csv"], f"error: {ws / 'nope.csv'}: dataset file not found"
    if case == "empty label column":
        path = _data_with(ws, "no_labels.csv", lambda f: f.assign(sentiment=None))
        return [*train, path], f"error: {path}: output column 'sentiment' is empty"
    if case == "text in a number column":
        path = _data_with(ws, "text_length.csv", _text_in_row_57)
        return [*train, path], f"error: {path}: number column 'length': 'twelve' is not a number (row 57)"
    if case == "unknown feature type":
        path = _bad_config(ws, "bad_type.yaml", lambda c: c["input_features"][1].update(type="categroy"))
        return ["train", "-c", path, "--dataset", ws / "train.csv"], (
            "error: input_features[1].type: 'categroy' is not supported (one of: text, category, number, binary, set) "
            "(did you mean 'category'?)")
    if case == "bad config key":
        path = _bad_config(ws, "bad_key.yaml", lambda c: c["trainer"].update(epoch=3))
        return ["train", "-c", path, "--dataset", ws / "train.csv"], "error: trainer.epoch: unknown key (did you mean 'epochs'?)"
    if case == "YAML syntax":
        (ws / "broken.yaml").write_text("input_features:\n  - name: a\n   type: text\n")
        return ["train", "-c", ws / "broken.yaml", "--dataset", ws / "train.csv"], f"error: {ws / 'broken.yaml'}: line 3, column 4: "
    if case == "missing config":
        return ["check-config", ws / "nope.yaml"], f"error: {ws / 'nope.yaml'}: config file not found"
    if case == "not a model folder":
        return ["predict", "-m", ws, "--dataset", ws / "train.csv"], f"error: {ws}: no model.safetensors (is this a tunefork model folder?)"
    raise AssertionError(case)


ERRORS = ["missing column", "empty file", "not UTF-8", "corrupt parquet", "missing file", "empty label column",
          "text in a number column", "unknown feature type", "bad config key", "YAML syntax", "missing config",
          "not a model folder"]


@pytest.mark.parametrize("case", ERRORS)
def test_user_error_is_one_line_without_traceback_or_run_directory(case, workspace, tmp_path, capsys):
    """In-process (the same `main` the console script runs), so the whole table costs no interpreter start-ups."""
    argv, expected = _setup_error(case, workspace)
    out = tmp_path / "results"
    argv = [str(a) for a in argv] + (["--output_directory", str(out)] if argv[0] in ("train", "predict") else [])
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()


@pytest.mark.parametrize("case", ["bad config key", "YAML syntax"])
def test_user_error_from_the_real_command(case, workspace, tmp_path):
    argv, expected = _setup_error(case, workspace)
    done = tunefork(*argv, "--output_directory", tmp_path / "results", cwd=workspace)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its permissions")
def test_unreadable_file(workspace, tmp_path, capsys):
    path = tmp_path / "locked.csv"
    path.write_text("review,sentiment\nok,positive\n")
    path.chmod(0)
    code = cli.main(["train", "-c", str(workspace / "config.yaml"), "--dataset", str(path), "--output_directory", str(tmp_path / "r")])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: cannot be read (")


def test_debug_shows_the_traceback(workspace, tmp_path):
    argv, _ = _setup_error("missing column", workspace)
    done = tunefork(*argv, "--output_directory", tmp_path / "results", "--debug", cwd=workspace)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "tunefork.errors.DataError" in done.stderr and "column 'genre' (feature 'genre') not found" in done.stderr
    assert not (tmp_path / "results").exists()


def test_a_missing_optional_dependency_names_the_extra_to_install(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_statistics.json").write_text(json.dumps({
        "evaluations": [{"step": 1}], "training": {"label": {"loss": [0.5]}}, "validation": {}}))
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ModuleNotFoundError
    code = cli.main(["visualize", "-v", "learning_curves", "-r", str(run), "-od", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err == "error: `tunefork visualize` needs matplotlib: pip install 'tunefork[viz]'\n"
