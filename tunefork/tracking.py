"""Experiment tracking (`--logger tensorboard`, `--logger mlflow`): per-step loss and learning rate, every
evaluation's metrics, and the config. Off unless asked for.

The training loop reports to one object with a small interface — `evaluation(epoch, step, scores, history,
improved)` after each evaluation and `step(step, loss, learning_rate)` after each optimizer step — and `Fanout` hands
each call to the Console, the run report's recorder and the trackers alike, so the loop knows none of them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from tunefork.errors import TuneforkError

LOGGERS = ("tensorboard", "mlflow")


class Fanout:
    """Forwards every report call to each target that has the method; `progress`, `note`, `table` are the Console's."""

    def __init__(self, console, *targets):
        self.console, self.targets = console, [console, *targets]

    @property
    def progress(self) -> bool:
        return self.console.progress

    def note(self, text: str) -> None:
        self.console.note(text)

    def table(self, scores: dict, title: str) -> None:
        self.console.table(scores, title)

    def step(self, step: int, loss: float, learning_rate: float) -> None:
        for target in self.targets:
            if hasattr(target, "step"):
                target.step(step, loss, learning_rate)

    def evaluation(self, epoch: int, step: int, scores: dict, history, improved: bool) -> None:
        for target in self.targets:
            target.evaluation(epoch, step, scores, history, improved)

    def close(self) -> None:
        for target in self.targets:
            if hasattr(target, "close"):
                target.close()


def _scalars(scores: dict):
    """(split/output/metric, value) for every finite number in an evaluation (the confusion matrix is not one)."""
    for split, outputs in scores.items():
        for output, metrics in outputs.items():
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    yield f"{split}/{output}/{name}", float(value)


class TensorBoard:
    """Event files under `<output_directory>/tensorboard/<run>`: `tensorboard --logdir results/tensorboard`."""

    def __init__(self, log_dir: Path, config_dict: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TuneforkError("--logger tensorboard needs the tensorboard package: pip install tensorboard") from None
        import yaml

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))
        text = yaml.safe_dump(config_dict, sort_keys=False, allow_unicode=True)
        # TensorBoard renders text as Markdown: indenting by four spaces keeps the YAML a code block
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def step(self, step: int, loss: float, learning_rate: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/learning_rate", learning_rate, step)

    def evaluation(self, epoch: int, step: int, scores: dict, history, improved: bool) -> None:
        for tag, value in _scalars(scores):
            self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("epoch", epoch, step)
        self.writer.flush()  # evaluations are rare: make each one visible in a running TensorBoard at once

    def close(self) -> None:
        self.writer.close()


def _flatten(tree, prefix: str = "") -> dict[str, str]:
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        for i, value in enumerate(tree):
            out.update(_flatten(value, f"{prefix}{value.get('name', i)}."))
    else:
        out[prefix[:-1]] = str(tree)[:500]  # MLflow caps a parameter value's length
    return out


class MLflow:
    """One MLflow run (tracking URI from MLFLOW_TRACKING_URI, as MLflow itself decides): params, metrics by step."""

    def __init__(self, run_name: str, config_dict: dict):
        try:
            import mlflow
        except ImportError:
            raise TuneforkError("--logger mlflow needs the mlflow package: pip install mlflow") from None
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run_name)
        params = _flatten(config_dict)
        keys = list(params)
        for i in range(0, len(keys), 100):  # MLflow accepts at most 100 params per call
            mlflow.log_params({k: params[k] for k in keys[i : i + 100]})
        mlflow.log_dict(config_dict, "config.yaml")

    def step(self, step: int, loss: float, learning_rate: float) -> None:
        self.mlflow.log_metrics({"train/loss": loss, "train/learning_rate": learning_rate}, step=step)

    def evaluation(self, epoch: int, step: int, scores: dict, history, improved: bool) -> None:
        self.mlflow.log_metrics({**dict(_scalars(scores)), "epoch": epoch}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def start(loggers, output_directory, run_name: str, config_dict: dict, console=None) -> list:
    """The trackers asked for (none by default), each opened and ready for the loop's reports."""
    if not loggers:
        return []
    names = [loggers] if isinstance(loggers, str) else list(loggers)
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise TuneforkError(f"unknown logger '{unknown[0]}' (one of: {', '.join(LOGGERS)})")
    stamped = f"{run_name}_{time.strftime('%Y%m%d-%H%M%S')}"
    trackers = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            tracker = TensorBoard(Path(output_directory) / "tensorboard" / stamped, config_dict)
            where = f"tensorboard --logdir {tracker.log_dir.parent}"
        else:
            tracker = MLflow(stamped, config_dict)
            where = f"MLflow run {tracker.run.info.run_id}"
        trackers.append(tracker)
        if console is not None:
            console.note(f"tracking: {where}")
    return trackers
