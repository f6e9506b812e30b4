"""`trainer.optimizer`: every `torch.optim` optimizer Ludwig names, with Ludwig's keys and torch's defaults.

Each class holds exactly the keyword arguments its torch optimizer takes (`training.optim` passes them through), so
no key is accepted that the optimizer would ignore. Ludwig's optimizers that torch lacks (bitsandbytes' 8-bit and
paged ones, lamb, lars, lion, ftrl, adafactor, schedule-free AdamW, muon, soap) and L-BFGS, which needs the loss
re-evaluated several times per step, are refused with what to write instead (`REFUSED`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunefork.sections import Section, tagged

Betas = tuple[float, float]


class _WithBetas(Section):
    @model_validator(mode="after")
    def _betas_below_one(self):
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        return self


class AdamOptimizer(_WithBetas):
    type: Literal["adam", "adamw"]
    betas: Betas = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="adamw: decoupled (Loshchilov & Hutter); adam: an L2 term.")
    amsgrad: bool = False


class AdamaxOptimizer(_WithBetas):
    type: Literal["adamax"]
    betas: Betas = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class NAdamOptimizer(_WithBetas):
    type: Literal["nadam"]
    betas: Betas = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum_decay: float = Field(0.004, ge=0)


class RAdamOptimizer(_WithBetas):
    type: Literal["radam"]
    betas: Betas = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class SGDOptimizer(Section):
    type: Literal["sgd"]
    momentum: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    dampening: float = Field(0.0, ge=0, le=1)
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening 0 (torch.optim.SGD's rule)")
        return self


class RMSPropOptimizer(Section):
    type: Literal["rmsprop"]
    momentum: float = Field(0.0, ge=0)
    alpha: float = Field(0.99, gt=0)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    centered: bool = False


class AdagradOptimizer(Section):
    type: Literal["adagrad"]
    lr_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-10, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    initial_accumulator_value: float = Field(0.0, ge=0)


class AdadeltaOptimizer(Section):
    type: Literal["adadelta"]
    rho: float = Field(0.9, ge=0, le=1)
    eps: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)


OPTIMIZER_CLASSES = (AdamOptimizer, AdamaxOptimizer, NAdamOptimizer, RAdamOptimizer, SGDOptimizer, RMSPropOptimizer,
                     AdagradOptimizer, AdadeltaOptimizer)
Optimizer = tagged(*OPTIMIZER_CLASSES, default="adam")

_BNB = "a bitsandbytes optimizer, which needs a CUDA GPU and the bitsandbytes package"
REFUSED = {
    **{name: f"{_BNB}; write type: {name.replace('paged_', '').replace('_8bit', '')} (torch's)"
       for name in ("adam_8bit", "adamw_8bit", "paged_adam", "paged_adamw", "paged_adam_8bit", "paged_adamw_8bit",
                    "sgd_8bit", "rmsprop_8bit", "adagrad_8bit")},
    **{name: f"{_BNB}; torch has no Lion: write type: adamw" for name in ("lion", "lion_8bit", "paged_lion",
                                                                           "paged_lion_8bit")},
    "lamb": "LAMB is not in torch.optim; write type: adamw (LAMB is AdamW with a per-layer trust ratio)",
    "lars": "LARS is not in torch.optim; write type: sgd with momentum: 0.9",
    "lars_8bit": f"{_BNB}; torch has no LARS: write type: sgd with momentum: 0.9",
    "adafactor": "transformers' Adafactor, not a torch.optim optimizer; write type: adamw",
    "schedule_free_adamw": "the schedulefree package's optimizer, not torch.optim's; write type: adamw with a "
                           "learning_rate_scheduler",
    "muon": "not in torch.optim; write type: sgd with momentum: 0.95 and nesterov: true",
    "soap": "the soap package's optimizer, not torch.optim's; write type: adamw",
    "ftrl": "FTRL is not in torch.optim; write type: adagrad (FTRL-Proximal's closest torch optimizer)",
    "lbfgs": "L-BFGS re-evaluates the loss several times per step (a closure), which a step over accumulated "
             "micro-batches cannot do; write type: adam, or sgd",
}


def refusal(optimizer) -> str | None:
    """The sentence refusing a Ludwig optimizer torch lacks, for `trainer.optimizer` given as a name or mapping."""
    name = optimizer.get("type") if isinstance(optimizer, dict) else optimizer
    return f"'{name}': {REFUSED[name]}" if isinstance(name, str) and name in REFUSED else None
