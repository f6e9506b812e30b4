"""Ludwig's command-line spellings: the command aliases, --config_str, --data_format, --mlflow, the --skip_save_* and
--skip_collect_* flags (each checked by the files it leaves out), and the flags refused in one line saying why."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from tiny import sentiment_frame

from tunefork import cli, config, ludwig_cli

CONFIG = ("{input_features: [{name: genre, type: category}, {name: score, type: number}], "
          "output_features: [{name: sentiment, type: category}], "
          "trainer: {epochs: 2, batch_size: 16, learning_rate: 0.02, early_stop: -1}}")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A table saved under an extension tunefork does not read (.txt), and one run trained from it."""
    folder = tmp_path_factory.mktemp("ludwig_cli")
    sentiment_frame(120, seed=3).to_csv(folder / "data.txt", index=False)
    code = cli.main(["train", "--config_str", CONFIG, "--dataset", str(folder / "data.txt"), "--data_format", "csv",
                     "--output_directory", str(folder / "results"), "--skip_save_progress",
                     "--skip_save_training_statistics", "--skip_save_training_description", "--quiet"])
    assert code == 0
    return folder


def one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_train_with_config_str_data_format_and_skip_flags_leaves_those_files_out(workspace):
    run = workspace / "results" / "experiment_run"
    assert sorted(os.listdir(run)) == ["efficiency.json", "model", "report.html", "resolved_config.yaml"]


@pytest.mark.parametrize("alias", ["render_config", "render-config"])
def test_render_config_alias_writes_the_full_config(alias, tmp_path, capsys):
    assert cli.main([alias, "--config_str", CONFIG, "-o", str(tmp_path / "full.yaml")]) == 0
    written = yaml.safe_load((tmp_path / "full.yaml").read_text())
    assert written == config.to_dict(config.load(yaml.safe_load(CONFIG)))
    assert written["trainer"]["epochs"] == 2 and "combiner" in written


def test_check_config_alias_and_the_config_given_twice(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(CONFIG)
    assert cli.main(["check_config", "-c", str(tmp_path / "c.yaml")]) == 0
    assert f"{tmp_path / 'c.yaml'}: valid" in capsys.readouterr().out
    assert one_line_error(capsys, ["check_config", str(tmp_path / "c.yaml"), "--config_str", CONFIG]) == (
        "error: give the config once: a path (or -c/--config) or --config_str, not both")


def test_init_config_alias_infers_a_config(workspace, capsys):
    assert cli.main(["init_config", "--dataset", str(workspace / "data.txt"),
                     "--target", "sentiment"]) == 2  # .txt: init-config reads by extension, and says so
    assert "unknown file type '.txt'" in capsys.readouterr().err
    sentiment_frame(40).to_csv(workspace / "data.csv", index=False)
    assert cli.main(["init_config", "--dataset", str(workspace / "data.csv"), "--target", "sentiment"]) == 0
    assert config.load(yaml.safe_load(capsys.readouterr().out)).output_features[0].name == "sentiment"


def test_evaluate_skips_overall_stats_and_predict_skips_its_file(workspace, tmp_path, capsys):
    run = workspace / "results" / "experiment_run"
    args = ["-m", str(run), "--dataset", str(workspace / "data.txt"), "--data_format", "csv", "--quiet"]
    assert cli.main(["evaluate", *args, "--output_directory", str(tmp_path / "e"), "--skip_collect_overall_stats"]) == 0
    statistics = json.loads((tmp_path / "e" / "test_statistics.json").read_text())
    assert "confusion_matrix" not in statistics["sentiment"] and statistics["sentiment"]["accuracy"] > 0.8
    assert cli.main(["evaluate", *args, "--output_directory", str(tmp_path / "s"), "--skip_save_eval_stats"]) == 0
    assert cli.main(["predict", *args, "--output_directory", str(tmp_path / "p"), "--skip_save_predictions"]) == 0
    assert "120 predictions made; none written" in capsys.readouterr().out
    assert not (tmp_path / "s").exists() and not (tmp_path / "p").exists()


def test_experiment_skips_its_evaluation_files(workspace, tmp_path):
    assert cli.main(["experiment", "--config_str", CONFIG, "--dataset", str(workspace / "data.txt"), "--data_format",
                     "csv", "--output_directory", str(tmp_path), "--skip_save_eval_stats", "--skip_collect_predictions",
                     "--quiet"]) == 0
    files = set(os.listdir(tmp_path / "experiment_run"))
    assert "model" in files and not files & {"test_statistics.json", "test_predictions.csv"}


def test_mlflow_flag_is_the_mlflow_logger():
    args = cli.parser().parse_args(["train", "--config_str", CONFIG, "--dataset", "d.csv", "--mlflow"])
    assert ludwig_cli.loggers(args) == ["mlflow"]
    args = cli.parser().parse_args(["train", "--config_str", CONFIG, "--dataset", "d.csv", "--logger", "tensorboard"])
    assert ludwig_cli.loggers(args) == ["tensorboard"]


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--backend", "horovod"], "error: backend='horovod' is not supported: tunefork distributes training with "
                                        "Ray Train (DDP or FSDP): use backend='ray'"),
    (["train", "--gpu_memory_limit", "0.5"], "error: --gpu_memory_limit: tunefork does not cap GPU memory"),
    (["train", "--training_set_metadata", "m.json"], "error: --training_set_metadata: tunefork fits the metadata"),
    (["experiment", "--eval_split", "validation"], "error: --eval_split validation: tunefork's experiment evaluates"),
    (["train", "--skip_save_log", "--logger", "tensorboard"], "error: --skip_save_log and --logger tensorboard"),
    (["train", "--data_format", "excel"], "error: data_format 'excel' is not read by tunefork: save the table as CSV"),
    (["train", "--data_format", "pickle"], "error: data_format 'pickle' is not read by tunefork (a pickle can run code"),
])
def test_flags_that_mean_nothing_here_are_refused_in_one_line(workspace, capsys, argv, message):
    argv = [*argv, "--config_str", CONFIG, "--dataset", str(workspace / "data.txt")]
    assert one_line_error(capsys, argv).startswith(message)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_inference_flags_that_mean_nothing_here_are_refused(workspace, capsys, command):
    base = [command, "-m", str(workspace / "results" / "experiment_run"), "--dataset", str(workspace / "data.txt")]
    assert "tunefork reads large datasets with Ray Data" in one_line_error(capsys, [*base, "--backend", "dask"])
    assert f"--split test: tunefork {command}s every row" in one_line_error(capsys, [*base, "--split", "test"])
    assert "--batch_size: set trainer.eval_batch_size" in one_line_error(capsys, [*base, "--batch_size", "8"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine with a GPU honours --gpus")
def test_gpus_on_a_machine_without_one_is_refused(workspace, capsys):
    line = one_line_error(capsys, ["train", "--config_str", CONFIG, "--dataset", str(workspace / "data.txt"),
                                   "--gpus", "0"])
    assert line == "error: gpus 0: this machine has no CUDA GPU, so tunefork runs on the CPU; leave gpus out"
