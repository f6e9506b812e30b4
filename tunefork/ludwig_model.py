"""`LudwigModel`: Ludwig's Python API (`ludwig.api.LudwigModel`) on tunefork, so that a Ludwig script runs with only
its import changed: `from tunefork import LudwigModel`.

A thin face over `tunefork.api.Model` (so over the one run lifecycle and the one training loop) that speaks
Ludwig's signatures, return shapes and column names:

    LudwigModel(config, logging_level, backend, gpus, ...)   config: a dict or a YAML path; `.config` is a dict
    train(...)      → TrainingResults(train_stats, preprocessed_data, output_directory)
    predict(...)    → PredictionResults(predictions, output_directory)
    evaluate(...)   → EvaluationResults(eval_stats, predictions, output_directory)
    experiment(...) → ExperimentResults(eval_stats, train_stats, preprocessed_data, output_directory)
    preprocess(...) → PreprocessedDataset(training_set, validation_set, test_set, training_set_metadata)
    generate(...)   (model_type: llm), LudwigModel.load(model_dir), save(path), save_config(path)

`train_stats.training[feature][metric]` (likewise `validation`, `test`) is a list with one value per evaluation, as
Ludwig keeps one per checkpoint. tunefork evaluates once per epoch unless `trainer.steps_per_checkpoint` or
`checkpoints_per_epoch` ask for more, so with the defaults it is one value per epoch;
`train_stats.evaluation_frequency` says which, as Ludwig's does.

Predictions carry Ludwig's columns: `<f>_predictions`, `<f>_probabilities` (the list, in class order),
`<f>_probabilities_<class>`, `<f>_probability`; an LLM's `<f>_response`.

A keyword tunefork cannot honour is refused by name, with what to write instead (`TuneforkError`); none is ignored.
The keywords that ask for an absence tunefork already guarantees are accepted: `skip_save_log` (tunefork writes
TensorBoard logs only when a `logger` is asked for) and `skip_save_unprocessed_output` (it never writes Ludwig's raw
tensor files). `generate` returns the generated text of each input; Ludwig decodes the whole sequence, input first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from tunefork import config as config_mod
from tunefork import rundir
from tunefork.api import Model, overall_stats
from tunefork.data import read
from tunefork.errors import TuneforkError, did_you_mean
from tunefork.ludwig_results import (
    EvaluationFrequency,
    EvaluationResults,
    ExperimentResults,
    PredictionResults,
    PreprocessedDataset,
    TrainingResults,
    TrainingStats,
    frame_or,
    ludwig_columns,
    shaped,
)

__all__ = ["EvaluationFrequency", "LudwigModel", "PreprocessedDataset", "TrainingStats"]
log = logging.getLogger("tunefork")
HYPERPARAMETERS = "model_hyperparameters.json"  # Ludwig's name for the saved config
# Ludwig backends with no counterpart here, and what to write instead
OTHER_BACKENDS = {"horovod": "tunefork distributes training with Ray Train (DDP or FSDP): use backend='ray'",
                  "deepspeed": "tunefork shards a model with Ray Train's FSDP: use backend='ray' with "
                               "backend.trainer.strategy: fsdp in the config",
                  "dask": "tunefork reads large datasets with Ray Data: use backend='ray'"}


def refuse(method: str, given: dict, accepted: dict) -> None:
    """Raise for the first keyword of `given` whose value is not its accepted one; `accepted` maps each keyword to
    (the value tunefork honours, what to write instead). Keywords Ludwig's signature does not have are refused too."""
    for name, value in given.items():
        if name not in accepted:
            raise TuneforkError(f"LudwigModel.{method}: unknown keyword {name!r}{did_you_mean(name, accepted)}; "
                                f"remove it (tunefork takes Ludwig's keywords of {method} and no others)")
        ok, instead = accepted[name]
        nothing = ok is None and isinstance(value, (list, tuple, dict)) and not value  # callbacks=[]: none asked for
        if value is not ok and value != ok and not nothing:
            raise TuneforkError(f"LudwigModel.{method}: {name}={value!r} is not supported: {instead}")


COMMON = {
    "training_set_metadata": (None, "tunefork fits the metadata on the training split of each run; leave it out"),
    "callbacks": (None, "tunefork has no callback hooks; follow a run with logger='tensorboard' or 'mlflow'"),
    "debug": (False, "use tunefork's --debug on the command line for full tracebacks"),
}
PREDICTING = {
    "split": ("full", "tunefork predicts every row of the dataset given; pass that split's rows as the dataset"),
    "batch_size": (None, "set trainer.eval_batch_size in the config; prediction batches follow it"),
    "skip_save_unprocessed_output": (True, "tunefork writes no raw tensor outputs; the probabilities are columns "
                                           "of the predictions"),
    "return_type": (pd.DataFrame, "give pd.DataFrame or dict"),
    "callbacks": COMMON["callbacks"],
}


def use_gpus(gpus) -> None:
    """Ludwig's `gpus` (CUDA_VISIBLE_DEVICES syntax): applied before CUDA starts, refused where there is none."""
    if gpus is None:
        return
    import torch

    visible = ",".join(map(str, gpus)) if isinstance(gpus, (list, tuple)) else str(gpus)
    if torch.cuda.is_initialized():
        raise TuneforkError(f"gpus {visible}: CUDA is already in use in this process; set CUDA_VISIBLE_DEVICES="
                            f"{visible} before starting Python instead")
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible
    if visible and not torch.cuda.is_available():
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
        raise TuneforkError(f"gpus {visible}: this machine has no CUDA GPU, so tunefork runs on the CPU; leave gpus out")


def with_backend(raw: dict, backend) -> dict:
    """The config with Ludwig's `backend` argument ('local' or 'ray') as its backend.type."""
    if backend is None:
        return raw
    if not isinstance(backend, str):
        raise TuneforkError("backend: give 'local' or 'ray' as a string (Ludwig's Backend objects have no "
                            "counterpart here), or set the config's backend section")
    if backend in OTHER_BACKENDS:
        raise TuneforkError(f"backend={backend!r} is not supported: {OTHER_BACKENDS[backend]}")
    if backend not in ("local", "ray"):
        raise TuneforkError(f"backend={backend!r} is not a backend here: use 'local' or 'ray'")
    section = raw.get("backend") if isinstance(raw.get("backend"), dict) else {}
    return raw if section.get("type", "local") == backend else {**raw, "backend": {"type": backend}}


def _evaluation_frequency(config) -> EvaluationFrequency:
    trainer = config.trainer
    steps, per_epoch = getattr(trainer, "steps_per_checkpoint", 0), getattr(trainer, "checkpoints_per_epoch", 0)
    if steps:
        return EvaluationFrequency(float(steps), "step")
    return EvaluationFrequency(1.0 / per_epoch if per_epoch else 1.0, "epoch")


class LudwigModel:
    """Ludwig's `LudwigModel` over a tunefork `Model`: the same arguments, return shapes and column names."""

    def __init__(self, config, logging_level: int = logging.ERROR, backend=None, gpus=None, gpu_memory_limit=None,
                 allow_parallel_threads: bool = True, callbacks=None):
        raw = config_mod.read_yaml(config) if isinstance(config, (str, Path)) else config
        if not isinstance(raw, dict):
            raise TuneforkError(f"config: give a dict or the path of a YAML file, got {type(raw).__name__}")
        self._setup(logging_level, gpus, gpu_memory_limit, allow_parallel_threads, callbacks)
        self._model = Model(with_backend(raw, backend), progress=self._verbose, quiet=not self._verbose)

    def _setup(self, logging_level, gpus, gpu_memory_limit, allow_parallel_threads, callbacks) -> None:
        refuse("__init__", {"gpu_memory_limit": gpu_memory_limit, "callbacks": callbacks},
               {"gpu_memory_limit": (None, "tunefork does not cap GPU memory; trainer.batch_size: auto fits the "
                                           "batch to the memory there is"), "callbacks": COMMON["callbacks"]})
        use_gpus(gpus)
        if not allow_parallel_threads:  # Ludwig's switch for repeatable CPU results: one intra-op thread
            import torch

            torch.set_num_threads(1)
        log.setLevel(logging_level)
        self._verbose = logging_level <= logging.INFO  # Ludwig's default, ERROR, prints no progress

    # ------------------------------------------------------------------------------------------------ the config
    @property
    def config(self) -> dict:
        """The config with every default filled in, as a dict (what `LudwigModel(config)` accepts again)."""
        return config_mod.to_dict(self._model.config)

    @property
    def model(self):
        """The trained torch module (None before training), as Ludwig's `model.model`."""
        return self._model.model

    @property
    def training_set_metadata(self) -> dict | None:
        return self._model.meta

    # ------------------------------------------------------------------------------------------------ training
    def train(self, dataset=None, training_set=None, validation_set=None, test_set=None, training_set_metadata=None,
              data_format=None, experiment_name: str = "api_experiment", model_name: str = "run",
              model_resume_path=None, skip_save_training_description: bool = False,
              skip_save_training_statistics: bool = False, skip_save_model: bool = False,
              skip_save_progress: bool = False, skip_save_log: bool = False, skip_save_processed_input: bool = False,
              output_directory: str = "results", random_seed: int = 42, **kwargs) -> TrainingResults:
        """Train and write `<output_directory>/<experiment_name>_<model_name>[_N]/`. `skip_save_model` writes no run
        directory at all (its model/ is the run's result), and output_directory is then None."""
        refuse("train", {"training_set_metadata": training_set_metadata, **kwargs}, COMMON)
        sets = [read.with_format(s, data_format, what) for s, what in
                ((dataset, "dataset"), (training_set, "training set"), (validation_set, "validation set"),
                 (test_set, "test set"))]
        result = self._model.train(*sets[:1], training_set=sets[1], validation_set=sets[2], test_set=sets[3],
                                   output_directory=output_directory, experiment_name=experiment_name,
                                   model_name=model_name, random_seed=random_seed, skip_save_model=skip_save_model,
                                   model_resume_path=model_resume_path, skip_save_progress=skip_save_progress,
                                   skip_save_processed_input=skip_save_processed_input,
                                   skip_save_training_statistics=skip_save_training_statistics,
                                   skip_save_training_description=skip_save_training_description)
        return TrainingResults(self._train_stats(result.statistics), self._preprocessed(),
                               _text(result.output_directory))

    def _train_stats(self, statistics: dict) -> TrainingStats:
        return TrainingStats(statistics.get("training", {}), statistics.get("validation", {}),
                             statistics.get("test", {}), _evaluation_frequency(self._model.config))

    def _preprocessed(self, splits: dict | None = None, prepared=None) -> PreprocessedDataset:
        """The last run's splits (or those given) and the metadata fitted on its training split."""
        splits = self._model.splits if splits is None else splits
        meta = (prepared or self._model.prepared).meta
        return PreprocessedDataset(splits.get("training"), splits.get("validation"), splits.get("test"), meta)

    def preprocess(self, dataset=None, training_set=None, validation_set=None, test_set=None,
                   training_set_metadata=None, data_format=None, skip_save_processed_input: bool = True,
                   random_seed: int = 42, **kwargs) -> PreprocessedDataset:
        """Read, split and preprocess as `train` would (its cache too, unless `skip_save_processed_input`)."""
        from tunefork import runner
        from tunefork.training.efficiency import Phases

        refuse("preprocess", {"training_set_metadata": training_set_metadata, **kwargs}, COMMON)
        data = runner.Data(*(read.with_format(s, data_format) for s in (dataset, training_set, validation_set, test_set)))
        splits, prepared = runner.prepare(self._model.recipe, data, random_seed, Phases(), skip_save_processed_input)
        return self._preprocessed(splits, prepared)

    def experiment(self, dataset=None, training_set=None, validation_set=None, test_set=None,
                   training_set_metadata=None, data_format=None, experiment_name: str = "experiment",
                   model_name: str = "run", model_resume_path=None, eval_split: str = "test",
                   skip_save_training_description: bool = False, skip_save_training_statistics: bool = False,
                   skip_save_model: bool = False, skip_save_progress: bool = False, skip_save_log: bool = False,
                   skip_save_processed_input: bool = False, skip_save_unprocessed_output: bool = False,
                   skip_save_predictions: bool = False, skip_save_eval_stats: bool = False,
                   skip_collect_predictions: bool = False, skip_collect_overall_stats: bool = False,
                   output_directory: str = "results", random_seed: int = 42, **kwargs) -> ExperimentResults:
        """Train, then evaluate the test split (eval_stats is None when the data had no test rows)."""
        refuse("experiment", {"training_set_metadata": training_set_metadata, "eval_split": eval_split, **kwargs},
               {**COMMON, "eval_split": ("test", "tunefork evaluates the test split; to score another split, pass "
                                                 "its rows to evaluate()")})
        sets = [read.with_format(s, data_format) for s in (dataset, training_set, validation_set, test_set)]
        result, statistics = self._model.experiment(
            sets[0], training_set=sets[1], validation_set=sets[2], test_set=sets[3], output_directory=output_directory,
            experiment_name=experiment_name, model_name=model_name, random_seed=random_seed,
            skip_save_model=skip_save_model, model_resume_path=model_resume_path,
            skip_save_eval_stats=skip_save_eval_stats,
            skip_save_predictions=skip_save_predictions or skip_collect_predictions,  # none collected: none saved
            skip_save_progress=skip_save_progress, skip_save_processed_input=skip_save_processed_input,
            skip_save_training_statistics=skip_save_training_statistics,
            skip_save_training_description=skip_save_training_description,
            skip_collect_overall_stats=skip_collect_overall_stats)
        return ExperimentResults(statistics, self._train_stats(result.statistics), self._preprocessed(),
                                 _text(result.output_directory))

    # ------------------------------------------------------------------------------------------------ inference
    def predict(self, dataset=None, data_format=None, split: str = "full", batch_size=None, generation_config=None,
                skip_save_unprocessed_output: bool = True, skip_save_predictions: bool = True,
                output_directory: str = "results", return_type=pd.DataFrame, callbacks=None,
                **kwargs) -> PredictionResults:
        """Predictions for every row; with `skip_save_predictions=False` also written to
        `<output_directory>/predictions.csv` (the next free name: predictions_1.csv, ...)."""
        refuse("predict", {"split": split, "batch_size": batch_size, "return_type": frame_or(return_type),
                           "skip_save_unprocessed_output": skip_save_unprocessed_output, "callbacks": callbacks,
                           **kwargs}, PREDICTING)
        model = self._generating(generation_config)
        predictions = ludwig_columns(model.predict(read.with_format(dataset, data_format)), model)
        written = None if skip_save_predictions else _write(output_directory, "predictions.csv", predictions)
        return PredictionResults(shaped(predictions, model, return_type), written)

    def evaluate(self, dataset=None, data_format=None, split: str = "full", batch_size=None,
                 skip_save_unprocessed_output: bool = True, skip_save_predictions: bool = True,
                 skip_save_eval_stats: bool = True, collect_predictions: bool = False,
                 collect_overall_stats: bool = False, output_directory: str = "results", return_type=pd.DataFrame,
                 **kwargs) -> EvaluationResults:
        """Statistics per output feature (and 'combined'); the predictions too with `collect_predictions`, the
        confusion matrices with `collect_overall_stats`. Files are written only where a skip_save_* is False."""
        refuse("evaluate", {"split": split, "batch_size": batch_size, "return_type": frame_or(return_type),
                            "skip_save_unprocessed_output": skip_save_unprocessed_output, **kwargs}, PREDICTING)
        statistics, predictions = self._model.score(read.with_format(dataset, data_format))
        predictions = ludwig_columns(predictions, self._model)
        written = None
        if not skip_save_eval_stats:
            written = _write(output_directory, "test_statistics.json", statistics)
        if not skip_save_predictions:
            written = _write(output_directory, "predictions.csv", predictions)
        return EvaluationResults(overall_stats(statistics, collect_overall_stats),
                                 shaped(predictions, self._model, return_type) if collect_predictions else None,
                                 written)

    def _generating(self, generation_config):
        """The model, or for an LLM given Ludwig's `generation_config` a copy generating with those settings (the
        same weights; the settings validated as the config's `generation` section)."""
        if generation_config is None:
            return self._model
        if self._model.config.model_type != "llm":
            raise TuneforkError("generation_config: only a model_type: llm generates text; leave it out")
        raw = config_mod.to_dict(self._model.config)
        config = config_mod.load({**raw, "generation": {**raw["generation"], **generation_config}})
        copy = Model(config, progress=False, quiet=True)
        fitted = self._model.fitted
        copy._fitted = type(fitted)(config, fitted.model, fitted.meta, fitted.tokenizers)
        return copy

    def generate(self, input_strings, generation_config=None, streaming: bool = False):
        """The generated text after each input string (no prompt template applied, as in Ludwig): a string for a
        string, a list for a list."""
        if self._model.config.model_type != "llm":
            raise TuneforkError("generate: only a model_type: llm generates text; use predict() for this model")
        refuse("generate", {"streaming": streaming}, {"streaming": (False, "responses come back whole; leave "
                                                                            "streaming out")})
        texts = [input_strings] if isinstance(input_strings, str) else list(input_strings)
        frame = pd.DataFrame({self._model.config.input_features[0].name: texts})
        frame.attrs["source"] = "input_strings"
        responses = self._generating(generation_config).fitted.generate(frame, texts)
        return responses[0] if isinstance(input_strings, str) else responses

    # ------------------------------------------------------------------------------------------------ on disk
    def save(self, save_path) -> None:
        """The model folder at `save_path` (what `LudwigModel.load` reads)."""
        self._model.save(save_path)

    def save_config(self, save_path) -> None:
        """`<save_path>/model_hyperparameters.json`: the config with every default, as Ludwig names it."""
        folder = Path(save_path)
        folder.mkdir(parents=True, exist_ok=True)
        rundir.write_json(folder / HYPERPARAMETERS, self.config)

    @staticmethod
    def load(model_dir, logging_level: int = logging.ERROR, backend=None, gpus=None, gpu_memory_limit=None,
             allow_parallel_threads: bool = True, callbacks=None, from_checkpoint: bool = False) -> LudwigModel:
        """A model folder (`results/<run>/model`) or its run directory."""
        refuse("load", {"from_checkpoint": from_checkpoint, "backend": backend},
               {"from_checkpoint": (False, "a finished run's model/ is what loads; continue a stopped run with "
                                           "train(model_resume_path=...)"),
                "backend": (None, "a loaded model predicts with its own config's backend; set backend in the config "
                                  "before training")})
        loaded = LudwigModel.__new__(LudwigModel)
        loaded._setup(logging_level, gpus, gpu_memory_limit, allow_parallel_threads, callbacks)
        loaded._model = Model.load(model_dir, progress=loaded._verbose, quiet=not loaded._verbose)
        return loaded


def _write(directory, name: str, value) -> str:
    """`value` as `name` in `directory`, never over an earlier file (the run directory's `_N` rule)."""
    path = rundir.output_file(directory, name)
    if isinstance(value, pd.DataFrame):
        value.to_csv(path, index=False)
    else:
        rundir.write_json(path, value)
    return str(Path(directory))


def _text(path) -> str | None:
    return None if path is None else str(path)
