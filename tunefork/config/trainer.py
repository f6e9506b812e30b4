"""The `trainer` section: Ludwig's names and defaults for the step loop."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tunefork.config.optimizers import AdamOptimizer, Optimizer, refusal
from tunefork.sections import Section

MAX_BATCH_SIZE = 2**40  # Ludwig's default: no cap


class LearningRateScheduler(Section):
    """Linear warm-up over `warmup_fraction` of the steps, then `decay` down to zero (or by `decay_rate`, or to
    `eta_min` along a cosine that restarts every `t_0` steps); reductions on a plateau multiply the whole schedule."""

    decay: Literal["linear", "cosine", "exponential"] | None = None
    decay_rate: float = Field(0.96, gt=0, le=1, description="Exponential decay: factor per decay_steps.")
    decay_steps: int = Field(10000, gt=0)
    staircase: bool = False
    warmup_fraction: float = Field(0.0, ge=0, lt=1)
    warmup_evaluations: int = Field(0, ge=0)
    reduce_on_plateau: int = Field(0, ge=0, description="Halve-style LR reductions allowed on a plateau (0: off).")
    reduce_on_plateau_patience: int = Field(10, gt=0)
    reduce_on_plateau_rate: float = Field(0.1, gt=0, lt=1)
    reduce_eval_metric: str = Field("loss", description="The metric of trainer.validation_field a plateau is read on.")
    reduce_eval_split: Literal["training", "validation", "test"] = Field(
        "training", description="The split a plateau is read on (Ludwig's default: training).")
    t_0: PositiveInt | None = Field(None, description="decay cosine: steps before the first restart (null: one "
                                    "cosine over the steps after warm-up, no restart).")
    t_mult: PositiveInt = Field(1, description="decay cosine with t_0: each period is t_mult times the one before.")
    eta_min: float = Field(0.0, ge=0, description="decay cosine: the learning rate at the bottom of each cosine.")

    @model_validator(mode="after")
    def _cosine_keys_need_cosine(self):
        moved = [k for k, default in (("t_0", None), ("t_mult", 1), ("eta_min", 0.0)) if getattr(self, k) != default]
        if moved and self.decay != "cosine":
            raise ValueError(f"{', '.join(moved)}: only the cosine decay reads {'it' if len(moved) == 1 else 'them'}; "
                             f"add decay: cosine, or remove {'it' if len(moved) == 1 else 'them'}")
        if self.t_mult != 1 and self.t_0 is None:
            raise ValueError("t_mult lengthens the periods between restarts, which start with t_0; set t_0")
        return self


class GradientClipping(Section):
    clipglobalnorm: float | None = Field(0.5, gt=0)
    clipnorm: float | None = Field(None, gt=0)
    clipvalue: float | None = Field(None, gt=0)


class Trainer(Section):
    type: Literal["trainer"] = "trainer"
    epochs: int = Field(100, gt=0)
    train_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: PositiveInt | Literal["auto"] = Field("auto", description="Rows per step per worker.")
    eval_batch_size: PositiveInt | Literal["auto"] | None = Field(None, description="Rows per evaluation batch.")
    max_batch_size: PositiveInt = Field(MAX_BATCH_SIZE, description="Caps batch_size: auto (and eval_batch_size: auto).")
    eval_steps: PositiveInt | None = Field(
        None, description="Evaluations during training score the first eval_steps batches of each split (null: all "
        "rows); the final evaluation always scores every row.")
    learning_rate: float | Literal["auto"] = Field(
        0.001, description="A number (> 0), or 'auto': a learning-rate range test before training picks it.")
    learning_rate_scaling: Literal["constant", "sqrt", "linear"] = "linear"
    optimizer: Optimizer = AdamOptimizer(type="adam")
    learning_rate_scheduler: LearningRateScheduler = LearningRateScheduler()
    gradient_accumulation_steps: PositiveInt | Literal["auto"] = "auto"
    gradient_clipping: GradientClipping = GradientClipping()
    regularization_type: Literal["l1", "l2", "l1_l2"] | None = None
    regularization_lambda: float = Field(0.0, ge=0)
    early_stop: int = Field(5, ge=-1, description="Evaluations without improvement before stopping (-1: never).")
    validation_field: str = Field("combined", description="Output feature (or 'combined') that picks the best model.")
    validation_metric: str = "loss"
    steps_per_checkpoint: int = Field(0, ge=0, description="Evaluate every N steps (0: once per epoch).")
    checkpoints_per_epoch: int = Field(0, ge=0)
    evaluate_training_set: bool = Field(
        False, description="true: a full pass over the training set each epoch; false: running metrics of the epoch."
    )
    skip_all_evaluation: bool = False
    should_shuffle: bool = True
    group_by_length: bool = Field(
        True, description="Shuffle, then batch rows of similar token length together (less padding, same data)."
    )
    use_mixed_precision: bool = False
    compile: bool = Field(False, description="torch.compile the model before training; the compilation time is "
                          "recorded in efficiency.json (seconds.compile).")
    layers_to_freeze_regex: str | None = Field(
        None, description="Parameters whose names this regular expression matches (re.search) do not train.")
    enable_gradient_checkpointing: bool = Field(
        False, description="Keep each transformer layer's input only and recompute the layer in backward: less "
        "activation memory for about one more forward pass. Needs a transformer that trains.")

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value <= 0:
            raise PydanticCustomError("greater_than", "Input should be greater than 0, or 'auto'")
        return value

    @field_validator("optimizer", mode="before")
    @classmethod
    def _torch_has_it(cls, value):
        problem = refusal(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("layers_to_freeze_regex")
    @classmethod
    def _compiles(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc})") from None
        return value
