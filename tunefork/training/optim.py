"""Ludwig's optimizer names → torch.optim, and the warm-up + decay schedule as one LambdaLR.

The cosine with restarts is torch's `CosineAnnealingWarmRestarts` (SGDR, Loshchilov & Hutter 2017) written as a
factor of the base learning rate, so that it composes with the warm-up and with reductions on a plateau in one
LambdaLR; tests/test_trainer_keys.py checks it against torch's own scheduler.
"""

from __future__ import annotations

import math

import torch

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "radam": torch.optim.RAdam,
}


def optimizer(section, params, lr: float) -> torch.optim.Optimizer:
    """The section's keys are exactly the optimizer's keyword arguments (`config.optimizers`)."""
    return OPTIMIZERS[section.type](params, lr=lr, **section.model_dump(exclude={"type"}))


def cosine_restarts(step: int, t_0: int, t_mult: int) -> tuple[int, int]:
    """(steps into the current period, the period's length) of SGDR after `step` steps."""
    if t_mult == 1:
        return step % t_0, t_0
    n = int(math.log(step / t_0 * (t_mult - 1) + 1, t_mult))
    return step - t_0 * (t_mult**n - 1) // (t_mult - 1), t_0 * t_mult**n


def schedule(section, total_steps: int, evaluate_every: int, base_lr: float = 1.0):
    """Multiplier of the base learning rate at each optimizer step. `eta_min` is a learning rate: as a factor it is a
    share of `base_lr`."""
    warmup = int(section.warmup_fraction * total_steps) + section.warmup_evaluations * evaluate_every
    floor = min(1.0, section.eta_min / base_lr)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if section.decay is None:
            return 1.0
        if section.decay == "exponential":
            exponent = (step - warmup) / section.decay_steps
            return section.decay_rate ** (math.floor(exponent) if section.staircase else exponent)
        if section.decay == "cosine":
            if section.t_0 is None:  # one cosine over the steps after warm-up
                into, period = min(step - warmup, total_steps - warmup), max(1, total_steps - warmup)
            else:
                into, period = cosine_restarts(step - warmup, section.t_0, section.t_mult)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * into / period))
        return 1.0 - min(1.0, (step - warmup) / max(1, total_steps - warmup))  # linear

    return factor


def clip(section, params) -> None:
    if section.clipvalue is not None:
        torch.nn.utils.clip_grad_value_(params, section.clipvalue)
    if section.clipnorm is not None:
        for p in params:
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_([p], section.clipnorm)
    if section.clipglobalnorm is not None:
        torch.nn.utils.clip_grad_norm_(params, section.clipglobalnorm)


def step(optimizer, scaler, clipping, params) -> None:
    """One optimizer step: unscale (fp16), clip, step — the same in every recipe; the caller clears gradients."""
    if scaler:
        scaler.unscale_(optimizer)
    clip(clipping, params)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
