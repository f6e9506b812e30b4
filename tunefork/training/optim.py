"""Ludwig's optimizer names → torch.optim, and the warm-up + decay schedule as one LambdaLR."""

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
}


def optimizer(section, params, lr: float) -> torch.optim.Optimizer:
    kwargs = section.model_dump(exclude={"type"})
    if section.type in ("adamax", "nadam"):
        kwargs.pop("amsgrad")
    return OPTIMIZERS[section.type](params, lr=lr, **kwargs)


def schedule(section, total_steps: int, evaluate_every: int):
    """Multiplier of the base learning rate at each optimizer step."""
    warmup = int(section.warmup_fraction * total_steps) + section.warmup_evaluations * evaluate_every

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if section.decay is None:
            return 1.0
        if section.decay == "exponential":
            exponent = (step - warmup) / section.decay_steps
            return section.decay_rate ** (math.floor(exponent) if section.staircase else exponent)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if section.decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress  # linear

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
