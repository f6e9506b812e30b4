"""What a search leaves: `hyperopt_statistics.json` in Ludwig's layout, `report.html`, and a line per finished trial.

    hyperopt_statistics.json
      hyperopt_config     the section as run (every default filled in)
      hyperopt_results    one record per trial, best first: trial_id, parameters, metric_score, status
                          (completed | stopped — by the scheduler or the time budget — | failed), error, scores (the
                          metric at each evaluation), run_directory, training_stats (its training_statistics.json)
      best                the best trial's record, without its training_stats
      search              folder, trial counts, wall / warm-up / Tune seconds, work done once, the seed

A trial's `metric_score` is the best value its evaluations reported (`goal` decides best): the model kept in its run
directory is the best checkpoint by the trainer's validation metric, which is the searched one when they agree. A
finished trial's scores are read from its own training_statistics.json, not from Tune's record: after a killed
search, Tune may hold no result for a trial that had finished, or the results of both attempts of a resumed one.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ray.tune import Callback

from tunefork import rundir
from tunefork.errors import TuneforkError, first_line

STATISTICS, REPORT = "hyperopt_statistics.json", "report.html"
SPLITS = {"train": "training", "training": "training", "validation": "validation", "test": "test"}
TRIAL_ID = re.compile(r"[0-9a-f]+_\d{5}")  # Tune's trial ids; a restored trial's folder may add "_<4 hex>"


@dataclass
class SearchResult:
    folder: Path
    best: dict | None  # the best trial's record (parameters, metric_score, run_directory, ...)
    statistics: dict


def best_of(scores: list, goal: str) -> float | None:
    finite = [s for s in scores if s is not None and math.isfinite(s)]
    if not finite:
        return None
    return max(finite) if goal == "maximize" else min(finite)


def _message(error) -> str:
    """The trial's error in one line: the user's sentence for a TuneforkError, else the exception's type and line."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    if isinstance(error, TuneforkError):
        return str(error)
    return f"{type(error).__name__}: {first_line(error)}"


def evaluations(statistics: dict, split: str, output: str, metric: str) -> list[tuple[dict, float | None]]:
    """A run's evaluations (epoch, step) with the searched metric at each, from its training_statistics.json."""
    values = statistics.get(split, {}).get(output, {}).get(metric)
    return [(point, values[i] if values is not None else None) for i, point in enumerate(statistics["evaluations"])]


def _trial_id(result) -> str:
    """The trial's id: in what it reported, else its Tune folder's name (without the suffix of a restored trial)."""
    name = Path(result.path).name
    reported = (result.metrics or {}).get("trial_id")
    if reported:
        return reported
    found = TRIAL_ID.match(name)
    return found.group(0) if found else name


def _record(result, hyperopt, folder: Path, score: str) -> dict:
    trial_id = _trial_id(result)
    run = folder / "trials" / f"trial_{trial_id}"  # the trial's run directory is named by its id (search.trial)
    statistics = run / "training_statistics.json"
    finished = (run / "model").is_dir() and statistics.is_file()
    if finished:
        scores = [v for _, v in evaluations(json.loads(statistics.read_text()), SPLITS[hyperopt.split],
                                             hyperopt.output_feature, hyperopt.metric) if v is not None]
    else:
        frame = result.metrics_dataframe
        scores = [float(v) for v in frame[score]] if frame is not None and score in frame else []
    if result.error is not None:
        status = "failed"
    else:
        status = "completed" if finished else "stopped"
    return {
        "trial_id": trial_id,
        "parameters": {path: (result.config or {}).get(path) for path in hyperopt.parameters},
        "metric_score": best_of(scores, hyperopt.goal),
        "status": status,
        "error": _message(result.error) if result.error is not None else None,
        "evaluations": len(scores),
        "scores": scores,
        "run_directory": str(run) if run.is_dir() else None,
        "training_stats": json.loads(statistics.read_text()) if statistics.is_file() else None,
    }


def ranked(records: list[dict], goal: str) -> list[dict]:
    """Scored trials best first, then those without a score (failed before their first evaluation)."""
    sign = -1 if goal == "maximize" else 1
    return sorted(records, key=lambda r: (r["metric_score"] is None, sign * (r["metric_score"] or 0.0)))


def collect(folder: Path, hyperopt, grid, score: str, search: dict) -> dict:
    records = ranked([_record(result, hyperopt, folder, score) for result in grid], hyperopt.goal)
    best = next((r for r in records if r["metric_score"] is not None), None)
    counts = {s: sum(r["status"] == s for r in records) for s in ("completed", "stopped", "failed")}
    budget = hyperopt.executor.time_budget_s
    return {
        "hyperopt_config": hyperopt.model_dump(mode="json"),
        "hyperopt_results": records,
        "best": {k: v for k, v in best.items() if k != "training_stats"} if best else None,
        "search": {"folder": str(folder), "trials": len(records), **counts,
                   "time_budget_reached": budget is not None and search["tune_seconds"] >= budget, **search},
    }


def finish(folder: Path, raw: dict, hyperopt, statistics: dict, console) -> SearchResult:
    from tunefork.hyperopt import page

    rundir.write_json(folder / STATISTICS, statistics)
    (folder / REPORT).write_text(page.render(folder.name, statistics, hyperopt))
    best = statistics["best"]
    search = statistics["search"]
    console.note(f"{search['trials']} trials: {search['completed']} completed, {search['stopped']} stopped early, "
                 f"{search['failed']} failed · {search['wall_seconds']:.1f} s")
    if best is not None:
        console.note(f"best trial {best['trial_id']}: {label(hyperopt)} {best['metric_score']:.6g} with "
                     f"{shown(best['parameters'])} ({best['run_directory']})")
    console.note(f"saved: {folder}")
    return SearchResult(folder, best, statistics)


def label(hyperopt) -> str:
    return f"{hyperopt.split} {hyperopt.output_feature} {hyperopt.metric}"


def shown(parameters: dict) -> str:
    def one(value):
        return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)

    return ", ".join(f"{path}={one(value)}" for path, value in parameters.items())


class Progress(Callback):
    """A line per finished trial, on the driver: its values, its metric and the best so far."""

    def __init__(self, score: str, hyperopt, quiet: bool):
        self.score, self.goal, self.quiet = score, hyperopt.goal, quiet
        self.label, self.paths = label(hyperopt), list(hyperopt.parameters)
        self.best: tuple[float, str] | None = None
        self.done = 0

    def _line(self, trial, how: str) -> None:
        self.done += 1
        scores = trial.metric_analysis.get(self.score, {})
        value = scores.get("max" if self.goal == "maximize" else "min")
        if value is not None and math.isfinite(value) and (
                self.best is None or (value > self.best[0] if self.goal == "maximize" else value < self.best[0])):
            self.best = (value, trial.trial_id)
        mine = f"{self.label} {value:.6g}" if value is not None else "no evaluation"
        best = f"best so far {self.best[0]:.6g} ({self.best[1]})" if self.best else "no best yet"
        values = shown({p: trial.config.get(p) for p in self.paths})
        if not self.quiet:
            print(f"trial {self.done} {trial.trial_id} {how}: {values} → {mine} · {best}", file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "failed")
