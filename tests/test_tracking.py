"""`--logger tensorboard`: per-step loss and learning rate, every evaluation's metrics and the config, read back."""

from __future__ import annotations

import importlib.util
import json

import pytest
import tiny
import yaml

from tunefork import tracking
from tunefork.errors import TuneforkError


class Probe:
    """A report target that only counts what the loop tells it."""

    def __init__(self):
        self.steps, self.evaluations = [], []

    def step(self, step, loss, learning_rate):
        self.steps.append((step, loss, learning_rate))

    def evaluation(self, epoch, step, scores, history, improved):
        self.evaluations.append(step)


def test_fanout_forwards_to_every_target_and_keeps_the_consoles_progress():
    from tunefork.console import Console
    from tunefork.report import Recorder

    probe, console, recorder = Probe(), Console(progress=False, quiet=True), Recorder()
    board = tracking.Fanout(console, probe, recorder)  # the recorder has no step(): it is skipped there
    board.step(3, 0.5, 1e-3)
    board.evaluation(1, 3, {"validation": {"y": {"loss": 0.5, "confusion_matrix": [[1, 0], [0, 1]]}}}, None, True)
    assert probe.steps == [(3, 0.5, 1e-3)] and probe.evaluations == [3] and board.progress is False
    assert recorder.at(0) == {"validation": {"y": [[1, 0], [0, 1]]}}
    board.close()  # targets without close() are skipped


def test_unknown_or_missing_loggers_are_one_clear_error(tmp_path):
    assert tracking.start(None, tmp_path, "run", {}) == []
    with pytest.raises(TuneforkError, match="unknown logger 'wandb'"):
        tracking.start(["wandb"], tmp_path, "run", {})
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(TuneforkError, match="pip install mlflow"):
            tracking.start("mlflow", tmp_path, "run", {})


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_logs_steps_evaluations_and_config(tiny_bert, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tunefork import Model

    config = {
        "input_features": [{"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 32},
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)}}],
        "output_features": [{"name": "score", "type": "number"}],
        "trainer": {"epochs": 2, "batch_size": 32, "learning_rate_scheduler": {"decay": "linear"}},
    }
    result, test = Model(config, progress=False, quiet=True).experiment(
        tiny.sentiment_frame(150), output_directory=tmp_path, logger="tensorboard")
    logs = list((tmp_path / "tensorboard").iterdir())
    assert len(logs) == 1 and logs[0].name.startswith("experiment_run_")
    events = EventAccumulator(str(logs[0]), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    steps = yaml.safe_load((result.output_directory / "resolved_config.yaml").read_text())["plan"]["total_steps"]["value"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, steps + 1))  # the optimizer step count, as evaluations use
    lr = [e.value for e in events.Scalars("train/learning_rate")]
    assert lr == sorted(lr, reverse=True) and lr[0] > lr[-1]  # linear decay, seen step by step
    statistics = json.loads((result.output_directory / "training_statistics.json").read_text())
    logged = [e.value for e in events.Scalars("validation/score/mean_absolute_error")]
    assert logged == pytest.approx(statistics["validation"]["score"]["mean_absolute_error"], rel=1e-6)
    assert [e.step for e in events.Scalars("epoch")] == [e["step"] for e in statistics["evaluations"]]
    assert "config/text_summary" in events.Tags()["tensors"]
    # the same run's report has the regression scatter for the split the test rows came from
    page = (result.output_directory / "report.html").read_text()
    assert 'alt="predicted vs true score test"' in page and test["score"]["r2"] is not None
