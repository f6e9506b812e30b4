"""Ludwig's return shapes for `LudwigModel` (`tunefork.ludwig_model`): the named tuples its methods return, the
training statistics with their evaluation frequency, and Ludwig's prediction columns and `return_type=dict`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

__all__ = ["EvaluationFrequency", "EvaluationResults", "ExperimentResults", "PredictionResults", "PreprocessedDataset",
           "TrainingResults", "TrainingStats", "frame_or", "ludwig_columns", "shaped"]


@dataclass(frozen=True)
class EvaluationFrequency:
    """How often the statistics were recorded: every `frequency` `period`s ('epoch' or 'step'), as in Ludwig."""

    frequency: float = 1.0
    period: str = "epoch"


@dataclass(frozen=True)
class TrainingStats:
    """split → output feature (and 'combined') → metric → one value per evaluation."""

    training: dict
    validation: dict
    test: dict
    evaluation_frequency: EvaluationFrequency = field(default_factory=EvaluationFrequency)

    def __getitem__(self, split: str) -> dict:  # Ludwig's dict-style access: train_stats["validation"]
        return {"training": self.training, "validation": self.validation, "test": self.test}[split]


class PreprocessedDataset(NamedTuple):
    """Each split's rows, as read and split by the run (DataFrames, which `predict` and `evaluate` take back, as
    Ludwig scripts pass `preprocessed_data.test_set` to `predict`; a split the data did not have is None), and the
    metadata fitted on the training split (vocabularies, normalization, label sets)."""

    training_set: pd.DataFrame | None
    validation_set: pd.DataFrame | None
    test_set: pd.DataFrame | None
    training_set_metadata: dict


class TrainingResults(NamedTuple):
    train_stats: TrainingStats
    preprocessed_data: PreprocessedDataset
    output_directory: str | None


class PredictionResults(NamedTuple):
    predictions: pd.DataFrame
    output_directory: str | None


class EvaluationResults(NamedTuple):
    eval_stats: dict
    predictions: pd.DataFrame | None
    output_directory: str | None


class ExperimentResults(NamedTuple):
    eval_stats: dict | None
    train_stats: TrainingStats
    preprocessed_data: PreprocessedDataset
    output_directory: str | None


def ludwig_columns(predictions: pd.DataFrame, model) -> pd.DataFrame:
    """tunefork's prediction columns plus Ludwig's `<f>_probabilities`: each row's class probabilities as a list,
    in the order of the `<f>_probabilities_<class>` columns (the model's class order). A set output has it already."""
    out = predictions.copy()
    for feature in model.config.output_features:
        per_class = [c for c in predictions.columns if c.startswith(f"{feature.name}_probabilities_")]
        if per_class and f"{feature.name}_probabilities" not in out.columns:
            position = out.columns.get_loc(per_class[0])
            out.insert(position, f"{feature.name}_probabilities", predictions[per_class].to_numpy().tolist())
    return out


def frame_or(return_type):
    """`return_type` as checked by `refuse`: Ludwig's dict (or 'dict') passes as the DataFrame default does."""
    return pd.DataFrame if return_type in (dict, "dict", "df", "pandas") else return_type


def shaped(predictions: pd.DataFrame, model, return_type):
    """The predictions as a DataFrame, or for Ludwig's `return_type=dict` as {output: {column suffix: values}}, so
    that `predictions["income"]["probabilities"]` holds each row's class probabilities."""
    if return_type not in (dict, "dict"):
        return predictions
    out = {}
    for feature in model.config.output_features:
        prefix = f"{feature.name}_"
        out[feature.name] = {c[len(prefix):]: predictions[c].to_numpy() for c in predictions.columns
                             if c.startswith(prefix)}
    return out
