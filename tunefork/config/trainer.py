"""The `trainer` section: Ludwig's names and defaults for the step loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from tunefork.sections import Section, tagged


class AdamOptimizer(Section):
    type: Literal["adam", "adamw", "adamax", "nadam"]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    amsgrad: bool = False


class SGDOptimizer(Section):
    type: Literal["sgd"]
    momentum: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    nesterov: bool = False


class RMSPropOptimizer(Section):
    type: Literal["rmsprop"]
    momentum: float = Field(0.0, ge=0)
    alpha: float = Field(0.99, gt=0)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class AdagradOptimizer(Section):
    type: Literal["adagrad"]
    lr_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-10, gt=0)
    weight_decay: float = Field(0.0, ge=0)


Optimizer = tagged(AdamOptimizer, SGDOptimizer, RMSPropOptimizer, AdagradOptimizer, default="adam")


class LearningRateScheduler(Section):
    """Linear warm-up over `warmup_fraction` of the steps, then `decay` down to zero (or by `decay_rate`)."""

    decay: Literal["linear", "cosine", "exponential"] | None = None
    decay_rate: float = Field(0.96, gt=0, le=1, description="Exponential decay: factor per decay_steps.")
    decay_steps: int = Field(10000, gt=0)
    staircase: bool = False
    warmup_fraction: float = Field(0.0, ge=0, lt=1)
    warmup_evaluations: int = Field(0, ge=0)
    reduce_on_plateau: int = Field(0, ge=0, description="Halve-style LR reductions allowed on a plateau (0: off).")
    reduce_on_plateau_patience: int = Field(10, gt=0)
    reduce_on_plateau_rate: float = Field(0.1, gt=0, lt=1)


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
    learning_rate: float = Field(0.001, gt=0)
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
    enable_gradient_checkpointing: bool = Field(
        False, description="Keep each transformer layer's input only and recompute the layer in backward: less "
        "activation memory for about one more forward pass. Needs a transformer that trains.")
