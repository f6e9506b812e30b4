"""The Python API: `Model(config).train(...)`, `.predict(df)`, `.evaluate(df)`, `.experiment(...)`, `.save`, `.load`.

A thin face over the one run lifecycle (`tunefork.runner`): the model type's recipe (`tunefork.recipes`) is picked
once, from `model_type`, and the trained model is the recipe's `Fitted` object, which predicts, evaluates and saves.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunefork import backends, recipes, rundir
from tunefork import config as config_mod
from tunefork.console import Console
from tunefork.data import read
from tunefork.runner import Data, Options, TrainResult

__all__ = ["Model", "TrainResult", "config_of_run", "overall_stats"]
config_of_run = rundir.config_of_run


def overall_stats(statistics: dict, keep: bool = True) -> dict:
    """`statistics` as they are, or without the overall statistics — the confusion matrices — that Ludwig collects
    only when asked (`collect_overall_stats`, `skip_collect_overall_stats`)."""
    if keep:
        return statistics
    return {name: {k: v for k, v in values.items() if k != "confusion_matrix"} if isinstance(values, dict) else values
            for name, values in statistics.items()}


class Model:
    """A tunefork model: built from a config, trained on data, or loaded from a model folder."""

    def __init__(self, config, *, progress: bool = True, quiet: bool = False, allow_pickle: bool = False):
        if allow_pickle:  # for this process: see tunefork.safety
            from tunefork import safety

            safety.allow_pickle()
        self.config = config_mod.load(config)
        self._source = config  # as given: a search writes its values into the user's own config (Ludwig's defaults too)
        self.console = Console(progress=progress, quiet=quiet)
        self.recipe = recipes.for_config(self.config)
        self._fitted = None  # the recipe's Fitted model, once trained or loaded
        self._folder = None  # the model folder it was loaded from (what Ray workers load)
        self._last_test = self._report = self.prepared = None  # prepared: the last run's preprocessed splits
        self.splits = {}  # the last run's rows per split (training, validation, test)
        self.test_predictions = None  # the last experiment's predictions of its test split

    # ------------------------------------------------------------------------------------------------ training
    def train(self, dataset=None, *, training_set=None, validation_set=None, test_set=None, output_directory="results",
              experiment_name: str = "experiment", model_name: str = "run", random_seed: int = 42,
              skip_save_model: bool = False, logger: str | list[str] | None = None,
              model_resume_path=None, **skip_save) -> TrainResult:
        """Train and write the run directory; `model_resume_path` continues a run that stopped from its last
        checkpoint, in the same directory, with the same seed and data (both checked). `skip_save` takes Ludwig's
        skip_save_progress, skip_save_processed_input, skip_save_training_statistics and
        skip_save_training_description (see `runner.Options`)."""
        from tunefork import runner

        self._folder = None  # the model trained now is not the one a folder held
        data = Data(dataset, training_set, validation_set, test_set)
        options = Options(output_directory, experiment_name, model_name, random_seed, skip_save_model, logger,
                          model_resume_path, **skip_save)
        trained = runner.train(self.recipe, self.console, data, options)
        self._fitted, self._last_test, self._report = trained.fitted, trained.test, trained.report
        self.prepared, self.splits = trained.prepared, trained.splits
        return trained.result

    def experiment(self, dataset=None, *, training_set=None, validation_set=None, test_set=None,
                   skip_save_eval_stats: bool = False, skip_save_predictions: bool = False,
                   skip_collect_overall_stats: bool = False, **kwargs):
        """Train, then evaluate on the test split; writes test_statistics.json and test_predictions.csv (unless
        skipped, with Ludwig's flags). The test predictions stay in `test_predictions`."""
        result = self.train(dataset, training_set=training_set, validation_set=validation_set, test_set=test_set, **kwargs)
        test, self.test_predictions = self._last_test, None
        if test is None or len(test) == 0:
            return result, None
        statistics, predictions = self._ready().evaluate(read.read(test))
        statistics, self.test_predictions = overall_stats(statistics, not skip_collect_overall_stats), predictions
        if result.output_directory is not None:
            if not skip_save_eval_stats:
                rundir.write_json(result.output_directory / "test_statistics.json", statistics)
            if not skip_save_predictions:
                predictions.to_csv(result.output_directory / "test_predictions.csv", index=False)
            if self._report is not None:
                self._report.add_test(statistics, predictions, test)
                self._report.write(result.output_directory / "report.html")
        self.console.table({"test": statistics}, "test set")
        return result, statistics

    def hyperopt(self, dataset=None, *, training_set=None, validation_set=None, test_set=None,
                 output_directory="results", random_seed: int = 42, resume: bool = False):
        """Search this config's `hyperopt` section on Ray Tune (`tunefork.hyperopt`): a trial per sampled config,
        each an ordinary run directory; returns the search's result (folder, best trial, statistics)."""
        from tunefork.hyperopt import hyperopt

        return hyperopt(self._source, dataset, training_set=training_set, validation_set=validation_set,
                        test_set=test_set, output_directory=output_directory, random_seed=random_seed, resume=resume,
                        console=self.console)

    # ------------------------------------------------------------------------------------------------ inference
    def _ready(self):
        """The trained or loaded model; a zero-shot LLM config loads its base model on first use."""
        if self._fitted is None:
            self._fitted = self.recipe.untrained()
        return self._fitted

    def predict(self, dataset) -> pd.DataFrame:
        """One row per input row: `<output>_predictions`, `_probabilities_<class>`, `_probability` (a classifier),
        `<output>_response` (a causal LM). A folder or glob of files, with backend.type: ray, is predicted by Ray
        Data workers and comes back as one frame in input order."""
        ray = backends.on_ray(self.config, dataset)
        if ray is not None:
            return backends.predict_files(self._folder or self._ready(), dataset, ray)
        return self._ready().predict(read.read(dataset))

    def evaluate(self, dataset) -> dict:
        """Metrics per output: loss, accuracy, macro-F1, ROC-AUC, confusion matrix; MAE, RMSE, R²; for a causal LM
        loss, perplexity and the generations' scores. A folder or glob of files goes to Ray as in `predict`."""
        return self.score(dataset)[0]

    def score(self, dataset) -> tuple[dict, pd.DataFrame]:
        """(the statistics of `evaluate`, the predictions of every scored row)."""
        ray = backends.on_ray(self.config, dataset)
        if ray is not None:
            return backends.evaluate_files(self._folder or self._ready(), dataset, ray)
        return self._ready().evaluate(read.read(dataset))

    # ------------------------------------------------------------------------------------------------ on disk
    def save(self, directory) -> Path:
        """Write the model folder to `directory`: a new or empty folder, or a tunefork model folder holding nothing
        else, which is replaced whole (the new one is written beside it, then renamed into place). Any other
        non-empty folder is refused: nothing tunefork did not write is deleted."""
        self._ready().save(Path(directory))
        return Path(directory)

    @classmethod
    def load(cls, directory, *, progress: bool = False, quiet: bool = True, trust_remote_code: bool = False) -> Model:
        """A model folder (or run directory). `trust_remote_code=True` lets code shipped with the folder run (an
        `auto_map` and its `.py` files); without it such a folder is refused. The folder's own `trust_remote_code`
        is never obeyed. `tunefork ... --trust-remote-code` sets it for the command's process."""
        from tunefork import safety
        from tunefork.models import folder

        trust = trust_remote_code or safety.remote_code_allowed()
        config, meta, model, tokenizers = folder.load(directory, trust_remote_code=trust)
        loaded = cls(config, progress=progress, quiet=quiet)
        loaded._fitted = loaded.recipe.loaded(model, meta, tokenizers)
        loaded._folder = folder.locate(directory)
        return loaded

    # ------------------------------------------------------------------------------------------------ what it holds
    @property
    def fitted(self):
        return self._ready()

    @property
    def model(self):
        """The trained torch module (None before training)."""
        return self._fitted.model if self._fitted is not None else None

    @property
    def meta(self) -> dict | None:
        return self._fitted.meta if self._fitted is not None else None

    @property
    def tokenizers(self):
        return self._fitted.tokenizers if self._fitted is not None else None

    @property
    def last_generation(self) -> dict | None:
        return getattr(self._fitted, "last_generation", None)
