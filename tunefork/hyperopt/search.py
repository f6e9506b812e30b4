"""The search: a `ray.tune.Tuner` whose trials each run the one training path (`runner.train`), with the work every
trial would repeat done once beforehand.

    check     every parameter path, probed value and the metric (`paths`): a ConfigError before Ray starts
    read      the dataset read and split once, handed to every trial through Ray's object store
    warm      preprocessing and a frozen encoder's embeddings computed once (once per distinct value of a searched
              preprocessing or encoder key) into the content-addressed caches: trials load them, never run the encoder
    tune      Tune's own search algorithm and scheduler; each trial reports after every evaluation, so ASHA prunes
    collect   hyperopt_statistics.json and report.html (`results`); one ordinary run directory per trial

A search killed outright resumes with `resume=True`: `Tuner.restore` runs the unfinished trials again and keeps the
finished ones. A trial that raises is recorded as failed, with its error, and the search goes on.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tunefork import config as config_mod
from tunefork import plan as plan_mod
from tunefork import recipes, rundir, runner
from tunefork.errors import ConfigError, TuneforkError
from tunefork.hyperopt import paths, results, space

log = logging.getLogger("tunefork.hyperopt")
SCORE = "metric_score"  # what each trial reports to Tune (Ludwig's name for it)


@dataclass(frozen=True)
class SearchOptions:
    output_directory: str | Path = "results"
    random_seed: int = 42
    resume: bool = False  # continue the newest search folder in output_directory
    quiet: bool = False


def _raw(source) -> tuple[dict, bool]:
    """The config as the user wrote it (dumped from a `Config` when that is what was given)."""
    if isinstance(source, (config_mod.Config, config_mod.LLMConfig)):
        return config_mod.to_dict(source), True
    raw = config_mod.read_yaml(source) if isinstance(source, (str, Path)) else source
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a config mapping"])
    return raw, False


def _base(raw: dict, config) -> dict:
    """The config every trial starts from: trained in the trial's own Tune actor, with the search's cache."""
    from tunefork.data import cache

    out = dict(raw)
    out["backend"] = {"type": "local", "cache_dir": str(cache.root(config).resolve())}
    return out


def prepare(source, options: SearchOptions):
    """(config, raw, dumped): the config with its hyperopt section, checked whole — before any data or Ray."""
    raw, dumped = _raw(source)
    config = config_mod.load(raw)
    if config.hyperopt is None:
        raise ConfigError(["hyperopt: the config has no hyperopt section; add one (parameters, metric, executor), or "
                           "train it as it is with tunefork train"])
    backend = config.backend
    if backend.type == "ray" and (backend.trainer.num_workers or 1) > 1:
        raise ConfigError(["backend.trainer.num_workers: a trial trains in one Tune actor; size it with "
                           "hyperopt.executor.cpu_resources_per_trial and gpu_resources_per_trial instead"])
    paths.check(config, raw, dumped)
    paths.check_metric(config, plan_mod.reported_metrics)
    space.tune_space(config.hyperopt.parameters)  # Tune's own checks of each range
    space.search_algorithm(config.hyperopt, options.random_seed)  # a missing searcher package fails here too
    return config, raw, dumped


def _variants(hyperopt) -> list[dict]:
    """The values of searched keys that change the preprocessed data or the embeddings, one dict per distinct
    combination of their discrete values ([{}] when none does: one warm-up serves every trial). A continuous one
    is left to the trials, each of which caches what it computes."""
    affecting = {path: p for path, p in hyperopt.parameters.items()
                 if {"preprocessing", "encoder"} & set(path.split(".")) and p.space in ("choice", "grid_search")}
    combos = itertools.product(*(paths.probes(p) for p in affecting.values()))
    return [dict(zip(affecting, combo, strict=True)) for combo in combos]


def _warm(base: dict, dumped: bool, hyperopt, frames: dict, seed: int, console) -> dict:
    """Preprocess and embed once per variant, into the caches: how many variants, preprocessing passes and encoder
    passes (a frozen cached encoder run over the data) that took."""
    done = {"variants": 0, "preprocessing_passes": 0, "encoder_passes": 0}
    for values in _variants(hyperopt):
        recipe = recipes.for_config(config_mod.load(paths.apply(base, values, dumped)))
        try:
            record = runner.warm(recipe, console, runner.Data(splits=frames), seed)
        except TuneforkError as exc:  # the trials with these values fail the same way, and are recorded as failed
            log.warning("%s: %s; the trials with these values will fail", results.shown(values), exc)
            continue
        done["variants"] += 1
        done["preprocessing_passes"] += not record.get("preprocessing_cache_hit", False)
        done["encoder_passes"] += sum(not hit for hit in record.get("embedding_cache_hit", {}).values())
    return done


def _new_folder(output_directory, raw: dict) -> Path:
    """The first free `hyperopt[_N]` folder in output_directory, holding the config it searches."""
    root = Path(output_directory)
    root.mkdir(parents=True, exist_ok=True)
    folder = rundir.reserve(root / "hyperopt", make=Path.mkdir)
    rundir.write_yaml(folder / "hyperopt_config.yaml", raw)
    return folder


def _resumed_folder(output_directory, raw: dict) -> Path:
    """The newest search folder in output_directory, which must hold this config's unfinished search."""
    root = Path(output_directory)
    found = sorted(root.glob("hyperopt*/tune"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise TuneforkError(f"--resume: {root} holds no search to resume (no hyperopt*/tune folder)")
    folder = found[-1].parent
    if (folder / results.STATISTICS).is_file():
        raise TuneforkError(f"--resume: the search in {folder} finished; start a new one without --resume")
    written = config_mod.read_yaml(folder / "hyperopt_config.yaml")
    if written != rundir._clean(raw):
        raise TuneforkError(f"--resume: the config differs from the one {folder} was started with; resume with "
                            f"that config ({folder / 'hyperopt_config.yaml'}) or start a new search")
    return folder


def run(source, data: runner.Data, options: SearchOptions, console) -> results.SearchResult:
    """Search, write the search folder, return its result (the best trial's parameters, metric and run folder)."""
    config, raw, dumped = prepare(source, options)
    hyperopt = config.hyperopt
    split = results.SPLITS[hyperopt.split]
    base = _base(raw, config)
    first = config_mod.load(paths.apply(base, {}, dumped))
    frames = runner.splits(first, data, options.random_seed)  # read and split once, for every trial
    if split not in frames:
        raise TuneforkError(f"hyperopt.split: the data has no {hyperopt.split} rows to score trials on "
                            "(check preprocessing.split, or give that set)")
    folder = _resumed_folder(options.output_directory, raw) if options.resume else None
    started = time.perf_counter()
    warmed = _warm(base, dumped, hyperopt, frames, options.random_seed, console)
    warm_seconds = time.perf_counter() - started
    folder = folder or _new_folder(options.output_directory, raw)  # everything before the trials went well
    job = {"raw": base, "dumped": dumped, "trials": str((folder / "trials").resolve()), "seed": options.random_seed,
           "split": split, "output": hyperopt.output_feature, "metric": hyperopt.metric}
    with _cluster(config):
        tuned = time.perf_counter()
        grid = _tune(config, job, frames, folder, options, console)
        tune_seconds = time.perf_counter() - tuned
    statistics = results.collect(folder, hyperopt, grid, SCORE, {
        "wall_seconds": round(time.perf_counter() - started, 3), "warm_seconds": round(warm_seconds, 3),
        "tune_seconds": round(tune_seconds, 3), "work_done_once": warmed, "random_seed": options.random_seed})
    return results.finish(folder, raw, hyperopt, statistics, console)


def _cluster(config):
    """This search's Ray: joined (backend.ray.address, else RAY_ADDRESS), or a local cluster started for it alone."""
    from tunefork.backends import cluster
    from tunefork.config.backend import RayBackend

    return cluster.session(config.backend if config.backend.type == "ray" else RayBackend(type="ray"))


def _tune(config, job: dict, frames: dict, folder: Path, options: SearchOptions, console):
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables off: the progress lines say what happened
    import ray
    from ray import tune

    hyperopt, executor = config.hyperopt, config.hyperopt.executor
    per_trial = resources(executor, ray.cluster_resources().get("GPU", 0))
    trainable = tune.with_resources(tune.with_parameters(trial, job=job, frames=frames), per_trial)
    storage = str(folder.resolve())
    if options.resume:
        console.note(f"resuming the search in {folder}: finished trials are kept, unfinished ones run again")
        tuner = tune.Tuner.restore(str(folder.resolve() / "tune"), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
        return tuner.fit()
    tuner = tune.Tuner(trainable, param_space=space.tune_space(hyperopt.parameters),
                       tune_config=tune.TuneConfig(**tune_settings(hyperopt, options.random_seed)),
                       run_config=tune.RunConfig(name="tune", storage_path=storage, verbose=0,
                                                 callbacks=[results.Progress(SCORE, hyperopt, options.quiet)],
                                                 failure_config=tune.FailureConfig(max_failures=0)))
    return tuner.fit()


def resources(executor, cluster_gpus: float) -> dict:
    """What each trial reserves on a cluster with `cluster_gpus` GPUs (`gpu_resources_per_trial: auto`: one each
    when there are any, so a GPU cluster's trials never train on its CPUs by default)."""
    gpus = executor.gpu_resources_per_trial
    if gpus == "auto":
        gpus = 1 if cluster_gpus else 0
    return {"cpu": executor.cpu_resources_per_trial, "gpu": gpus}


def tune_settings(hyperopt, seed: int) -> dict:
    """The TuneConfig a section makes: Tune's searcher and scheduler, the trial count, concurrency and time budget."""
    executor = hyperopt.executor
    concurrent = executor.max_concurrent_trials
    variants = hyperopt.search_alg.type in ("variant_generator", "random")  # it limits itself (`space`)
    return {"metric": SCORE, "mode": "max" if hyperopt.goal == "maximize" else "min",
            "search_alg": space.search_algorithm(hyperopt, seed), "scheduler": space.scheduler(executor.scheduler),
            "num_samples": executor.num_samples,
            "max_concurrent_trials": None if variants or concurrent in (None, "auto") else concurrent,
            "time_budget_s": executor.time_budget_s, "reuse_actors": True,
            "trial_dirname_creator": _trial_folder}


def _trial_folder(trial) -> str:
    return trial.trial_id


class Reporter:
    """A report target (`tunefork.tracking`) in a trial: the searched metric after every evaluation, to Tune.

    The run's last evaluation is held back until the run has finished (its model saved, `flush`): a scheduler that
    stops a trial when it reports — ASHA at `max_t`, or at a rung that falls on the last evaluation — would otherwise
    cut the trial off between its last evaluation and its save."""

    progress = False

    def __init__(self, split: str, output: str, metric: str, run: Path):
        self.split, self.output, self.metric, self.run = split, output, metric, run
        self.total_steps, self.held = None, None

    def evaluation(self, epoch: int, step: int, scores: dict, history, improved: bool) -> None:
        from ray import tune

        value = scores.get(self.split, {}).get(self.output, {}).get(self.metric)
        result = {SCORE: float("nan") if value is None else float(value), "epoch": epoch, "step": step}
        if self.total_steps is None and (self.run / rundir.RESOLVED).is_file():  # the plan, written before training
            self.total_steps = config_mod.read_yaml(self.run / rundir.RESOLVED)["plan"]["total_steps"]["value"]
        if self.total_steps is not None and step >= self.total_steps:
            self.held = result
            return
        tune.report(result)

    def flush(self) -> None:
        from ray import tune

        if self.held is not None:
            tune.report(self.held)
            self.held = None

    def replay(self, statistics: dict) -> None:
        """Report a finished run's evaluations again, from its training_statistics.json."""
        for point, value in results.evaluations(statistics, self.split, self.output, self.metric):
            scores = {self.split: {self.output: {self.metric: value}}} if value is not None else {}
            self.evaluation(point["epoch"], point["step"], scores, None, False)
        self.flush()


def trial(params: dict, job: dict, frames: dict) -> None:
    """One trial: the searched values written into the config, then the one training path, in a run directory of
    its own (`trials/trial_<id>`). An attempt cut off by a killed search is removed before the trial runs again."""
    from ray import tune
    from transformers.utils import logging as hf_logging

    from tunefork.console import Console

    hf_logging.set_verbosity_error()  # a trial's output is its records: load reports would fill the driver's log
    hf_logging.disable_progress_bar()
    trial_id = tune.get_context().get_trial_id()
    earlier = Path(job["trials"]) / f"trial_{trial_id}"
    reporter = Reporter(job["split"], job["output"], job["metric"], earlier)
    if (earlier / "model").is_dir():  # finished before the search was killed, and Tune had not recorded it yet
        return reporter.replay(json.loads((earlier / "training_statistics.json").read_text()))
    if earlier.is_dir():
        shutil.rmtree(earlier)
    config = config_mod.load(paths.apply(job["raw"], params, job["dumped"]))
    options = runner.Options(output_directory=job["trials"], experiment_name="trial", model_name=trial_id,
                             random_seed=job["seed"], listeners=(reporter,))
    try:
        runner.train(recipes.for_config(config), Console(progress=False, quiet=True), runner.Data(splits=frames),
                     options)
        reporter.flush()
    except TuneforkError as exc:  # the user's one sentence, not a traceback, is what the trial record keeps
        print(f"trial {trial_id} failed: {exc}", file=sys.stderr)
        raise
