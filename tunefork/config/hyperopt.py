"""The `hyperopt` section: Ludwig's hyperparameter search, run on Ray Tune by `tunefork hyperopt`.

    hyperopt:
      goal: maximize                       # minimize (default) | maximize
      output_feature: label                # an output feature, or combined (loss only: Ludwig's rule)
      metric: accuracy                     # one the output feature reports
      split: validation                    # train | validation (default) | test
      parameters:                          # dotted config paths; a list is addressed by feature name
        trainer.learning_rate: {space: loguniform, lower: 1.0e-4, upper: 1.0e-2}
        combiner.fc_layers: {space: choice, categories: [[{output_size: 64}], [{output_size: 128}]]}
        input_features.sentence.encoder.adapter.r: {space: grid_search, values: [4, 8]}
        defaults.text.encoder.dropout: {space: uniform, lower: 0.0, upper: 0.3}
      search_alg: {type: hyperopt, random_state_seed: 42}   # variant_generator (default) | random | hyperopt | optuna
      executor:
        type: ray
        num_samples: 16
        time_budget_s: 3600
        cpu_resources_per_trial: 1
        gpu_resources_per_trial: auto   # one GPU per trial when the cluster has GPUs
        max_concurrent_trials: auto
        scheduler: {type: async_hyperband, grace_period: 1, max_t: 10}

The key names and defaults are Ludwig's (ludwig/schema/hyperopt); the search algorithms and schedulers are Ray Tune's
own, with Tune's argument names. This module is only the schema: that each parameter path exists in the config and
that the metric is one the output reports are checked by `tunefork.hyperopt.check`, which needs the whole config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from tunefork.sections import Section, tagged

# what each search space reads (Ludwig's ParameterConfig classes); `mean` and `sd` have defaults. Ludwig's `base` of
# the log spaces is refused: a log-uniform draw is the same in every base, and Ray Tune ignores the argument.
SPACES = {
    "choice": ("categories",),
    "grid_search": ("values",),
    "uniform": ("lower", "upper"),
    "quniform": ("lower", "upper", "q"),
    "loguniform": ("lower", "upper"),
    "qloguniform": ("lower", "upper", "q"),
    "randn": ("mean", "sd"),
    "qrandn": ("mean", "sd", "q"),
    "randint": ("lower", "upper"),
    "qrandint": ("lower", "upper", "q"),
    "lograndint": ("lower", "upper"),
    "qlograndint": ("lower", "upper", "q"),
}
OPTIONAL = {"mean", "sd"}


class Parameter(Section):
    """One searched value: a space and what it reads (`categories`, `values`, `lower`/`upper`, `q`, `mean`/`sd`)."""

    space: Literal[tuple(SPACES)]
    categories: list[Any] | None = Field(None, min_length=1, description="choice: the values to pick from.")
    values: list[Any] | None = Field(None, min_length=1, description="grid_search: every value is tried.")
    lower: float | None = None
    upper: float | None = None
    q: float | None = Field(None, gt=0, description="Quantization: values are rounded to a multiple of q.")
    base: float | None = Field(None, description="Refused: Ludwig's log base, which changes no draw.")
    mean: float = 0.0
    sd: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _keys_of_the_space(self):
        if self.base is not None:
            raise ValueError("base: a log-uniform draw is the same in every base (Ray Tune ignores it); remove base")
        used = SPACES[self.space]
        given = {k for k in self.model_fields_set if k not in ("space", "base")}
        stray = sorted(given - set(used))
        if stray:
            raise ValueError(f"space {self.space} takes {', '.join(used)}; remove {', '.join(stray)}")
        missing = [k for k in used if k not in OPTIONAL and getattr(self, k) is None]
        if missing:
            raise ValueError(f"space {self.space} needs {', '.join(missing)}")
        if self.lower is not None and self.upper is not None and not self.lower < self.upper:
            raise ValueError(f"lower ({self.lower:g}) must be below upper ({self.upper:g})")
        if self.space.startswith(("log", "qlog")) and self.lower is not None and self.lower <= 0:
            raise ValueError(f"space {self.space} needs lower > 0, got {self.lower:g}")
        if "randint" in self.space and any(v is not None and v != int(v) for v in (self.lower, self.upper, self.q)):
            raise ValueError(f"space {self.space} takes whole numbers for lower, upper and q")
        return self


class VariantGenerator(Section):
    """Tune's BasicVariantGenerator: every grid_search value × num_samples random draws of the other spaces."""

    type: Literal["variant_generator", "random"] = "variant_generator"
    random_state_seed: int | None = Field(None, description="Seed of the random draws; unset: a new search each run.")


class HyperOptSearch(Section):
    """Tree-structured Parzen estimators (the hyperopt package, through tune.search.hyperopt)."""

    type: Literal["hyperopt"]
    random_state_seed: int | None = None
    n_initial_points: PositiveInt = Field(20, description="Random trials before the TPE model proposes.")
    gamma: float = Field(0.25, gt=0, lt=1, description="Share of trials TPE counts as good.")


class OptunaSearch(Section):
    """Optuna's TPE sampler (tune.search.optuna)."""

    type: Literal["optuna"]
    random_state_seed: int | None = None
    n_startup_trials: PositiveInt = Field(10, description="Random trials before the sampler models the space.")


SearchAlgorithm = tagged(VariantGenerator, HyperOptSearch, OptunaSearch, default="variant_generator")
TimeAttr = Literal["training_iteration", "time_total_s"]  # an iteration is one evaluation of the trial


class FIFO(Section):
    """Every trial runs to its end (Tune's FIFOScheduler)."""

    type: Literal["fifo"] = "fifo"


class AsyncHyperBand(Section):
    """ASHA (Tune's AsyncHyperBandScheduler): at each rung, trials below the top 1/reduction_factor stop."""

    type: Literal["async_hyperband", "asha"]
    time_attr: TimeAttr = "training_iteration"
    max_t: PositiveInt = Field(100, description="No trial runs past this many time_attr units.")
    grace_period: PositiveInt = Field(1, description="No trial stops before this many units.")
    reduction_factor: float = Field(4, gt=1)
    brackets: PositiveInt = 1


class HyperBand(Section):
    """Synchronous HyperBand (Tune's HyperBandScheduler)."""

    type: Literal["hyperband"]
    time_attr: TimeAttr = "training_iteration"
    max_t: PositiveInt = 81
    reduction_factor: float = Field(3, gt=1)
    stop_last_trials: bool = True


class MedianStoppingRule(Section):
    """A trial whose best result is below the median of the others' at the same point stops (Tune's rule)."""

    type: Literal["median_stopping_rule"]
    time_attr: TimeAttr = "training_iteration"
    grace_period: float = Field(1, ge=0, description="No trial stops before this many time_attr units.")
    min_samples_required: PositiveInt = 3
    min_time_slice: float = Field(0, ge=0)
    hard_stop: bool = Field(True, description="Stop the trial (false: only pause it).")


Scheduler = tagged(FIFO, AsyncHyperBand, HyperBand, MedianStoppingRule, default="fifo")


class Executor(Section):
    """How the trials run on the Ray cluster (Ludwig's executor: only `ray`)."""

    type: Literal["ray"] = "ray"
    num_samples: PositiveInt = Field(10, description="Samples drawn; with grid_search spaces, per grid point.")
    time_budget_s: PositiveInt | None = Field(3600, description="The whole search stops after this long, keeping "
                                              "the finished trials and the best so far.")
    cpu_resources_per_trial: float = Field(1, gt=0)
    gpu_resources_per_trial: float | Literal["auto"] = Field(
        "auto", description="auto: one GPU per trial when the cluster has GPUs, else none (Ludwig's default of 0 "
        "left a GPU cluster's trials on the CPU).")
    max_concurrent_trials: PositiveInt | Literal["auto"] | None = Field(
        "auto", description="auto / null: as many as the cluster's resources hold.")
    scheduler: Scheduler = FIFO()


class Hyperopt(Section):
    goal: Literal["minimize", "maximize"] = "minimize"
    output_feature: str = "combined"
    metric: str = "loss"
    split: Literal["train", "training", "validation", "test"] = "validation"
    parameters: dict[str, Parameter] = Field(min_length=1)
    search_alg: SearchAlgorithm = VariantGenerator()
    executor: Executor = Executor()
