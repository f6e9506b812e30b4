"""Reducing the learning rate on a plateau, Ludwig's way: `reduce_eval_metric` of `trainer.validation_field`, read on
`reduce_eval_split` (the training split by default) at every evaluation; after `reduce_on_plateau_patience`
evaluations without improvement the schedule is multiplied by `reduce_on_plateau_rate`, at most `reduce_on_plateau`
times. Early stopping keeps watching the validation metric on its own count (`training.loop`).
"""

from __future__ import annotations

import math

from tunefork.errors import ConfigError
from tunefork.plan import higher_is_better


def check_split(section, tables: dict) -> None:
    """`reduce_eval_split` must name a split the run has rows of (checked before the run directory exists)."""
    split = section.reduce_eval_split
    if section.reduce_on_plateau and (tables.get(split) is None or not len(tables[split])):
        raise ConfigError([f"trainer.learning_rate_scheduler.reduce_eval_split: this run has no {split} rows to read "
                           f"a plateau on; write training or a split the data has"])


def reduce(config, progress, scheduler, scores: dict) -> None:
    """Count this evaluation on the plateau watch (`progress.plateau_best` / `plateau_stale`), and reduce the
    scheduler's base learning rates when the patience runs out."""
    section = config.trainer.learning_rate_scheduler
    if not section.reduce_on_plateau or section.reduce_eval_split not in scores:
        return
    metric = section.reduce_eval_metric
    value = scores[section.reduce_eval_split][config.trainer.validation_field][metric]
    best = progress.plateau_best
    if math.isfinite(value) and (best is None or (value > best if higher_is_better(metric) else value < best)):
        progress.plateau_best, progress.plateau_stale = value, 0
        return
    progress.plateau_stale += 1
    if progress.reductions < section.reduce_on_plateau and progress.plateau_stale % section.reduce_on_plateau_patience == 0:
        progress.reductions += 1
        scheduler.base_lrs = [lr * section.reduce_on_plateau_rate for lr in scheduler.base_lrs]
