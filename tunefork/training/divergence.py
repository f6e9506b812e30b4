"""A run that diverges stops: the first NaN or infinite training loss ends it, with what usually brings it back.

Such a loss never comes back: its gradients make every weight NaN, and the scores, the best model and the
predictions that followed would all be read from NaN (argmax of NaN is class 0). So `fit` stops at the first such
step, before its optimizer step, and raises `DivergedError`; the run lifecycle (`tunefork.runner`) keeps the
checkpoints written so far and writes no model.
"""

from __future__ import annotations

import math

import torch

from tunefork.errors import DivergedError


class Watch:
    """The training loss of every optimizer step, checked; and the weights `fit` hands back."""

    def __init__(self, config, plan):
        self.config, self.plan = config, plan
        self.last: tuple[int, float] | None = None  # (step, loss) of the last step whose loss was finite

    def loss(self, step: int, loss: float, best: dict | None) -> None:
        """`loss` is the logged loss of optimizer step `step`: already a Python float, so checking costs nothing; in
        a distributed run it is the all-reduced value, so every rank raises at the same step."""
        if math.isfinite(loss):
            self.last = (step, loss)
            return
        raise DivergedError(f"training diverged at step {step}: the loss is {loss} ({self._last()}); {self.advice()}",
                            best=best)

    def weights(self, params, dist, step: int, best: dict | None) -> None:
        """The weights at the end are finite. A last step can turn them NaN while its own loss was still finite, with
        no evaluation since that improved on the best to restore. Checked once, summed over the ranks."""
        bad = sum(int(not torch.isfinite(p).all().item()) for p in params)
        if dist.sum(bad):
            raise DivergedError(f"training diverged: after step {step} the weights hold NaN or infinite values "
                                f"({self._last()}); {self.advice()}", best=best)

    def _last(self) -> str:
        if self.last is None:
            return "no earlier step of this session had a finite loss"  # a resumed run's earlier steps are not kept
        step, loss = self.last
        return f"the last finite loss was {loss:.6g}, at step {step}"

    def advice(self) -> str:
        """What usually brings a diverging run back, for this run's settings."""
        trainer = self.config.trainer
        if trainer.learning_rate == "auto":  # the range test chose it: a number below its pick is the way back
            tips = [f"set trainer.learning_rate below the {self.plan['learning_rate']:g} its range test chose"]
        else:
            tips = [f"lower trainer.learning_rate (now {trainer.learning_rate:g})"]
        clipping = trainer.gradient_clipping
        if clipping.clipglobalnorm is None and clipping.clipnorm is None and clipping.clipvalue is None:
            tips.append("enable gradient clipping (trainer.gradient_clipping.clipglobalnorm)")
        else:
            tips.append("clip gradients harder (trainer.gradient_clipping)")
        if self.plan["precision"] != "fp32":
            tips.append(f"train in fp32 (trainer.use_mixed_precision: false; now {self.plan['precision']})")
        return ", ".join(tips[:-1]) + " or " + tips[-1]
