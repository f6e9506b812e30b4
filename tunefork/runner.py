"""`train`: the data flow of DESIGN.md written out once, for every model type.

    read → split → recipe.prepare → plan.resolve → recipe.build → recipe.ready (embeddings, memory: a measured plan)
    → run directory → fit (this process, or Ray Train's workers) → recipe.finish → run directory finished

The recipe (`tunefork.recipes`) supplies what differs between a classifier and a causal LM; everything here —
resuming, backends, the plan, checkpoints, trackers, the efficiency record and the report — is the same for both.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunefork import config as config_mod
from tunefork import plan as plan_mod
from tunefork.data import read, split
from tunefork.errors import DivergedError, TuneforkError
from tunefork.rundir import RunDirectory, check_names, remote_code, write_json
from tunefork.training import plateau
from tunefork.training.efficiency import Phases

log = logging.getLogger("tunefork")
LR_RANGE_TEST = "learning_rate_range_test.json"  # learning_rate: auto's chosen value, rule and loss curve


@dataclass
class TrainResult:
    output_directory: Path | None
    statistics: dict
    efficiency: dict
    plan: dict


@dataclass(frozen=True)
class Data:
    dataset: object = None
    training_set: object = None
    validation_set: object = None
    test_set: object = None
    splits: dict | None = None  # tables already read and split (a search reads and splits once for every trial)


@dataclass(frozen=True)
class Options:
    output_directory: str | Path = "results"
    experiment_name: str = "experiment"
    model_name: str = "run"
    random_seed: int = 42
    skip_save_model: bool = False
    logger: str | list[str] | None = None
    model_resume_path: str | Path | None = None
    skip_save_progress: bool = False  # no checkpoints while training: the run cannot be resumed
    skip_save_processed_input: bool = False  # the preprocessed splits are neither read from nor written to the cache
    skip_save_training_statistics: bool = False  # no training_statistics.json in the finished run directory
    skip_save_training_description: bool = False  # no description.json once the run finished
    listeners: tuple = ()  # more report targets (`tunefork.tracking`): a search's trial reports to Ray Tune


@dataclass(frozen=True)
class Trained:
    """What `train` hands back: the records, the fitted model, the splits' rows (split name → DataFrame; none
    when Ray Data read a file set), the run report (or None) and the preprocessed splits with their metadata."""

    result: TrainResult
    fitted: object
    splits: dict
    report: object
    prepared: object

    @property
    def test(self) -> pd.DataFrame | None:
        return self.splits.get("test")


def splits(config, data: Data, seed: int) -> dict[str, pd.DataFrame]:
    """The training / validation / test tables: one dataset split by `preprocessing.split`, or the sets given."""
    if data.splits is not None:
        return dict(data.splits)
    if data.dataset is not None and data.training_set is not None:
        raise TuneforkError("give either dataset (split by preprocessing.split) or training_set, not both")
    if data.dataset is None and data.training_set is None:
        raise TuneforkError("no data: give dataset, or training_set (with optional validation_set and test_set)")
    sampling = config.preprocessing
    if data.dataset is not None:
        frame = _sample(read.read(data.dataset), sampling, seed)
        parts = split.split(frame, sampling.split, seed)
        # a split given probability 0 (or too small to get a row) is absent, not an empty table
        return {name: part for name, part in parts.items() if name == "training" or len(part)}
    frames = {"training": _sample(read.read(data.training_set, "training set"), sampling, seed)}
    for name, source in (("validation", data.validation_set), ("test", data.test_set)):
        if source is not None:
            frames[name] = read.read(source, f"{name} set")
    return frames


def _sample(frame: pd.DataFrame, sampling, seed: int) -> pd.DataFrame:
    n = len(frame)
    if sampling.sample_size is not None:
        n = min(n, sampling.sample_size)
    elif sampling.sample_ratio < 1.0:
        n = max(1, int(round(n * sampling.sample_ratio)))
    if n == len(frame):
        return frame
    out = frame.sample(n=n, random_state=seed)  # row labels kept: errors name rows of the user's table
    out.attrs = frame.attrs
    return out


def _resume_point(run: RunDirectory, seed: int, config) -> tuple[dict, int, dict]:
    """The last checkpoint of a stopped run, the seed it was started with, and the safe changes of `config` over the
    run's own (`tunefork.resume`: any other change is refused, before any data is read)."""
    from tunefork import backends, resume
    from tunefork.training import checkpoint

    changed = resume.check(run.path, run.description()["config"], config_mod.to_dict(config))
    for path, (old, new) in changed.items():
        log.info("resuming with %s %s (the run had %s)", path, new, old)
    point = checkpoint.load(run.checkpoints) or backends.resume_point(config, run.path)
    if point is None:
        raise TuneforkError(f"{run.path}: no checkpoint was written before the run stopped; start it again instead")
    original = run.description()["random_seed"]
    if original != seed:
        log.info("resuming with the run's random_seed %s", original)
    return point, original, changed


def prepare(recipe, data: Data, seed: int, phases: Phases, skip_save_processed_input: bool = False):
    """(raw splits, the recipe's preprocessed data): read → split → recipe.prepare, or Ray Data for a file set."""
    from tunefork import backends
    from tunefork.data import cache

    config = recipe.config
    cache_dir = None if skip_save_processed_input else cache.root(config)
    files = backends.file_set(config, data.dataset)  # a folder or glob: Ray Data reads it, never one pandas frame
    frames = {}
    if files is None:
        with phases("read"):
            frames = splits(config, data, seed)
    with phases("preprocess"):
        prepared = (recipe.prepare(frames, seed, cache_dir) if files is None
                    else recipe.prepare_files(files, seed, cache_dir))
    return frames, prepared


def train(recipe, console, data: Data, options: Options) -> Trained:
    """Train and write the run directory."""
    from tunefork import backends

    check_names(options.experiment_name, options.model_name)  # before any work: they also name the trackers' runs
    with backends.session(recipe.config):  # backend ray: this run's cluster (joined, or started and stopped)
        return _train(recipe, console, data, options)


def _train(recipe, console, data: Data, options: Options):
    from tunefork import backends, check, tracking
    from tunefork import report as report_mod

    config, phases, seed = recipe.config, Phases(), options.random_seed
    check.check(config)  # what needs no data (metric names, prompt columns, the model's config.json) fails first
    resumed = RunDirectory.stopped(options.model_resume_path) if options.model_resume_path else None
    with phases("resume"):
        resume, seed, changed = _resume_point(resumed, seed, config) if resumed else (None, seed, {})
    frames, prepared = prepare(recipe, data, seed, phases, options.skip_save_processed_input)
    if prepared.cache_hit:
        console.note("preprocessed data: loaded from the cache")
    workers = backends.workers(config)  # local: this process; ray: from the cluster's resources
    hardware = backends.hardware(config, workers)

    found: dict = {"measured": None, "range_test": None}  # what was measured on the built model, for a new plan

    def resolve(measured=None):
        found["measured"] = measured
        return plan_mod.resolve(config, prepared.facts, hardware, workers, measured, found["range_test"])

    plan = resolve()
    with phases("load"):
        model = recipe.build(prepared, plan, seed)
    freeze_matching(model, config.trainer.layers_to_freeze_regex)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    console.note(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(1, total):.2f}%)")
    # the estimate is of this process; a Ray worker holds a shard (FSDP) on its own machine
    prepared, plan = recipe.ready(model, prepared, plan, resolve, console, phases, config.backend.type == "local")
    if config.trainer.learning_rate == "auto" and plan["total_steps"]:
        found["range_test"] = _range_test(recipe, model, prepared, plan, seed, resumed, phases)
        plan = resolve(found["measured"])
    plateau.check_split(config.trainer.learning_rate_scheduler, prepared.tables)
    for key, decision in plan.decisions.items():
        translated = key == "strategy" and decision.reason != "backend.trainer.strategy"  # Ludwig's deepspeed
        if key in ("precision", "batch_size", "learning_rate", "max_sequence_length") or translated or \
                key.startswith("cache_embeddings."):
            console.note(f"{key}: {decision.value} — {decision.reason}")

    run = resumed
    if run is not None:
        run.check_same_data(prepared.fingerprints)
        run.resumed(config_mod.to_dict(config), plan, changed)  # its records follow the config it continues with
    elif not options.skip_save_model:  # everything is validated: from here on the run directory exists
        run = RunDirectory.create(options.output_directory, options.experiment_name, options.model_name,
                                  config_mod.to_dict(config), plan, prepared.fingerprints,
                                  {k: len(v) for k, v in prepared.tables.items()}, seed, remote_code(config))
    if run is not None and found["range_test"] is not None:
        write_json(run.path / LR_RANGE_TEST, found["range_test"])
    recorder = report_mod.Recorder()  # the Console, the report's recorder and any trackers all hear the loop
    board = tracking.Fanout(console, recorder, *options.listeners, *tracking.start(options.logger, options.output_directory,
                                                               f"{options.experiment_name}_{options.model_name}",
                                                               config_mod.to_dict(config), console))
    with phases("fit"):
        try:
            history, distributed, seconds = _fit(recipe, model, prepared, plan, seed, board,
                                                 None if options.skip_save_progress else run, resume, workers)
        except DivergedError as exc:
            raise _diverged(exc, run, created=resumed is None) from exc
        finally:
            board.close()
    model = recipe.finish(model, console)
    phases.seconds.update(train=history.train_seconds, evaluate=history.evaluate_seconds)
    if history.compile_seconds is not None:
        phases.seconds["compile"] = history.compile_seconds  # the first compiled step, inside train
    if seconds is not None:
        phases.seconds["checkpoint"] = seconds  # inside evaluate: each follows an evaluation
    fitted = recipe.fitted(model, prepared, plan)
    statistics = history.to_json()
    efficiency = _efficiency(recipe, prepared, plan, phases, history, distributed)
    if run is not None:
        report = report_mod.collect(run.name, config_mod.to_dict(config), plan, recorder, statistics, efficiency,
                                    prepared.meta, fitted.report_points(prepared.tables), found["range_test"])
        run.finish(fitted, statistics, efficiency, report, keep_statistics=not options.skip_save_training_statistics,
                   keep_description=not options.skip_save_training_description)
        console.note(f"saved: {run.path}")
    result = TrainResult(run.path if run else None, statistics, efficiency, plan.to_dict())
    return Trained(result, fitted, frames, report if run is not None else None, prepared)


def _range_test(recipe, model, prepared, plan, seed: int, resumed: RunDirectory | None, phases) -> dict:
    """`learning_rate: auto`: the range test's result — the one a resumed run recorded when it started, else a new
    test on the model as built (`training.lr_range`)."""
    from tunefork.training import lr_range

    recorded = resumed.path / LR_RANGE_TEST if resumed is not None else None
    if recorded is not None and recorded.is_file():
        return json.loads(recorded.read_text())
    with phases("learning_rate_range_test"):
        return lr_range.run(recipe.task(prepared, plan), model, prepared.tables["training"], recipe.config, plan, seed)


def freeze_matching(model, pattern: str | None) -> None:
    """`trainer.layers_to_freeze_regex`: parameters whose names the pattern finds (`re.search`, as Ludwig) stop
    training. A pattern that freezes nothing, or everything that trained, is refused with some names to match."""
    import re

    from tunefork.errors import ConfigError

    if pattern is None:
        return
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    matched = [p for name, p in trainable if re.search(pattern, name)]
    shown = ", ".join(name for name, _ in trainable[:3])
    if not matched:
        raise ConfigError([f"trainer.layers_to_freeze_regex: '{pattern}' matches no trainable parameter's name "
                           f"(they read like: {shown}, ...)"])
    if len(matched) == len(trainable):
        raise ConfigError([f"trainer.layers_to_freeze_regex: '{pattern}' matches every trainable parameter, so "
                           f"nothing would train; narrow it"])
    for p in matched:
        p.requires_grad_(False)
    log.info("layers_to_freeze_regex: %d of %d trainable parameter tensors frozen", len(matched), len(trainable))


def _fit(recipe, model, prepared, plan, seed, board, run, resume, workers):
    """(History, distributed facts or None, checkpoint seconds or None): in this process, or on Ray Train's workers."""
    from tunefork import backends
    from tunefork.training import checkpoint
    from tunefork.training.loop import fit, scores_only

    task = recipe.task(prepared, plan)
    if plan["total_steps"] == 0:  # trainer.type none: nothing trains; the splits are scored once
        return scores_only(task, model, prepared.tables, recipe.config, plan), None, None
    if recipe.config.backend.type == "ray":  # every worker runs `fit`; Ray Train persists the checkpoints
        history, distributed = backends.fit(model, prepared, recipe.config, plan, seed, report=board,
                                            run_dir=run.path if run else None, workers=workers)
        return history, distributed, None
    checkpoints = checkpoint.Checkpoints(run.checkpoints) if run is not None else None
    history = fit(task, model, prepared.tables, recipe.config, plan, seed, report=board, checkpoints=checkpoints,
                  resume=resume)
    return history, None, checkpoints.seconds if checkpoints is not None else None


def _diverged(exc: DivergedError, run: RunDirectory | None, created: bool) -> DivergedError:
    """A diverged run writes no model/ and no final records. Its checkpoints stay, and the best one so far is named.

    Not offered for resuming: a resume is exact, so with the same config it diverges again at the same step, and a
    new learning rate is a change a resume refuses (`tunefork.resume`). A run directory this call created that holds
    no checkpoint yet is removed, as a run that fails before training leaves none."""
    from tunefork.training import checkpoint

    pointer = run.checkpoints / checkpoint.POINTER if run is not None else None
    if pointer is not None and pointer.is_file():
        names, scored = json.loads(pointer.read_text()), exc.best
        if scored is not None and names["best"] == f"step-{scored['step']}":
            kept = (f"the best checkpoint so far ({names['best']}: {scored['split']} {scored['field']} "
                    f"{scored['metric']} {scored['value']:.6g}) is kept")
        else:  # no evaluation had a finite score: the pointer's "best" is merely the first checkpoint
            kept = f"its last checkpoint ({names['last']}; no evaluation had a finite score) is kept"
        return DivergedError(f"{exc}; no model was saved; {kept} in {run.checkpoints}", exc.best)
    if run is not None and created:
        shutil.rmtree(run.path, ignore_errors=True)
    return DivergedError(f"{exc}; no checkpoint had been written, so nothing was saved", exc.best)


def _efficiency(recipe, prepared, plan, phases, history, distributed) -> dict:
    from tunefork.training import memory
    from tunefork.training.efficiency import record

    estimate = plan.get("memory_estimate_mb")
    peak = memory.peak_since_reset() if estimate is not None else None
    return record(plan, phases, history, **recipe.efficiency(prepared, plan),
                  estimated_peak_mb=estimate["peak_mb"] if estimate is not None else None,
                  peak_rss_training_mb=round(peak / 2**20, 1) if peak else None,
                  **({"distributed": distributed} if distributed else {}))


def warm(recipe, console, data: Data, seed: int = 42):
    """The work every run of this config and data would repeat — reading, splitting, preprocessing and a frozen
    encoder's embeddings — done once into the content-addressed caches (`data.cache`, `encoders.embeddings`), so
    later runs load it. `recipe.config` must train locally. Returns the recipe's record of what came from the
    caches (`preprocessing_cache_hit`, `embedding_cache_hit` per cached feature: false where it was computed now)."""
    from tunefork import backends, check

    config, phases = recipe.config, Phases()
    check.check(config)
    _, prepared = prepare(recipe, data, seed, phases)
    workers = backends.workers(config)
    hardware = backends.hardware(config, workers)

    def resolve(measured=None):
        return plan_mod.resolve(config, prepared.facts, hardware, workers, measured)

    plan = resolve()
    model = recipe.build(prepared, plan, seed)
    prepared, plan = recipe.ready(model, prepared, plan, resolve, console, phases, False)
    return recipe.efficiency(prepared, plan)
