"""`learning_rate: auto`: a learning-rate range test before training (Smith, "Cyclical Learning Rates for Training
Neural Networks", 2017, §3.3), with the defaults and the pick of PyTorch Lightning's `lr_find`, which Ludwig's
`tune_learning_rate` follows (with Ludwig's stopping threshold, 3; Lightning's is 4):

    100 optimizer steps on training batches, the learning rate growing exponentially from 1e-8 to 1;
    the loss smoothed (exponential moving average, β 0.98, bias-corrected);
    stop early once the smoothed loss exceeds 3 × its best, or is not finite;
    the pick: the learning rate where the smoothed loss falls fastest (the most negative `np.gradient` of the curve,
    the first 10 and the last point left out, as Lightning's `suggestion(skip_begin=10, skip_end=1)`).

Written here rather than borrowed because Lightning's needs its Trainer and Ludwig's its own: the test runs the
model's real training step (the one task forward, the config's optimizer, clipping and mixed precision) on a copy of
the starting state — weights, buffers and the RNGs are put back afterwards, and its optimizer is thrown away — so
training then starts exactly where it would have.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tunefork.errors import TuneforkError
from tunefork.training import batches, optim
from tunefork.training.loop import autocast, placed, trainable_state

STEPS, MIN_LR, MAX_LR, STOP_FACTOR, BETA, SKIP_BEGIN, SKIP_END = 100, 1e-8, 1.0, 3.0, 0.98, 10, 1


def steepest(losses: list[float], skip_begin: int = SKIP_BEGIN, skip_end: int = SKIP_END) -> int | None:
    """Index of the steepest descent of `losses` (Lightning's suggestion), or None when too few points remain."""
    kept = np.asarray(losses[skip_begin : len(losses) - skip_end], dtype=float)
    if len(kept) < 2 or not np.isfinite(kept).all():
        return None
    return int(np.gradient(kept).argmin()) + skip_begin


def run(task, model, table, config, plan, seed: int, steps: int = STEPS, low: float = MIN_LR,
        high: float = MAX_LR) -> dict:
    """The range test on `model` (left as it was found). Returns {learning_rate, steps, min_lr, max_lr, curve}."""
    trainer = config.trainer
    device = plan["device"]
    placed(model, device)
    state, rng_state = trainable_state(model), torch.get_rng_state()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.optimizer(trainer.optimizer, params, low)
    rng = np.random.default_rng(seed)
    order: list[np.ndarray] = []
    curve, average, best = [], 0.0, math.inf
    model.train()
    try:
        for step in range(steps):
            if not order:  # another pass over the training rows, if the test outlasts one
                order = list(batches.training_order(len(table), plan["batch_size"], rng, True, None))
            lr = low * (high / low) ** (step / (steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(plan):
                loss = task.forward(model, table, order.pop(0), device).loss
            loss.backward()
            optim.step(optimizer, None, trainer.gradient_clipping, params)
            optimizer.zero_grad(set_to_none=True)
            average = BETA * average + (1 - BETA) * loss.item()
            smoothed = average / (1 - BETA ** (step + 1))
            if not math.isfinite(smoothed):
                break
            curve.append({"learning_rate": lr, "loss": smoothed})
            if smoothed > STOP_FACTOR * best:
                break
            best = min(best, smoothed)
    finally:
        model.load_state_dict(state, strict=False)
        torch.set_rng_state(rng_state)
        model.zero_grad(set_to_none=True)
    pick = steepest([point["loss"] for point in curve])
    if pick is None:
        raise TuneforkError(f"trainer.learning_rate: auto: the range test's loss diverged after {len(curve)} of "
                            f"{steps} steps, too early to read a slope; set a learning rate (a number)")
    return {"learning_rate": curve[pick]["learning_rate"], "steps": len(curve), "min_lr": low, "max_lr": high,
            "rule": "steepest descent of the smoothed loss (PyTorch Lightning's lr_find suggestion)", "curve": curve}
