"""Hyperparameter search on Ray Tune (`tunefork.hyperopt`) on the shared local 2-CPU cluster, with a tiny frozen BERT
whose embeddings are cached: a grid's trials equal separate `train` runs with the same values and seed, and the
encoder runs once for the whole search; ASHA stops a bad trial early; a failing trial is recorded and the search goes
on; the time budget stops the search with the best so far written; a search killed with SIGKILL resumes without
redoing finished trials. The section's checks (paths, values, metric) fail before Ray starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiny

from tunefork import Model
from tunefork.config import ConfigError
from tunefork.hyperopt import hyperopt

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tunefork[ray]')")


def _config(model, search: dict, epochs: int = 2) -> dict:
    return {
        "input_features": [{"name": "review", "type": "text", "preprocessing": {"cache_encoder_embeddings": True},
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(model)}}],
        "output_features": [{"name": "sentiment", "type": "category"}],
        "trainer": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.01},
        "hyperopt": {"goal": "maximize", "output_feature": "sentiment", "metric": "accuracy",
                     "executor": {"num_samples": 1, "max_concurrent_trials": 2}, **search},
    }


GRID = {"parameters": {"trainer.learning_rate": {"space": "grid_search", "values": [0.03, 0.001]},
                       "combiner.output_size": {"space": "grid_search", "values": [8, 16]}}}


@pytest.fixture(scope="module")
def frame():
    return tiny.sentiment_frame(120, seed=3)


# ------------------------------------------------------------------------------------------------ before Ray


@pytest.mark.parametrize(("parameters", "message"), [
    ({"trainer.learning_rat": {"space": "uniform", "lower": 0.001, "upper": 0.1}},
     r"hyperopt.parameters.trainer.learning_rat: 'trainer.learning_rat' is not a config path \(did you mean "
     r"'trainer.learning_rate'\?\)"),
    ({"input_features.reviews.preprocessing.max_sequence_length": {"space": "choice", "categories": [8, 16]}},
     r"'input_features' has no feature named 'reviews' .*did you mean 'input_features.review'"),
    ({"defaults.text.preprocesing.max_sequence_length": {"space": "choice", "categories": [8, 16]}},
     r"did you mean 'defaults.text.preprocessing'"),
    ({"combiner.dropout": {"space": "uniform", "lower": 0.5, "upper": 1.5}}, r"the value 1.5 is refused"),
    ({"trainer.learning_rate": {"space": "uniform", "lower": 0.1, "upper": 0.01}}, r"lower \(0.1\) must be below"),
    ({"trainer.learning_rate": {"space": "uniform", "lower": 0.1, "upper": 0.2, "q": 2}}, r"remove q"),
    ({"trainer.learning_rate": {"space": "loguniform", "lower": 0.1, "upper": 0.2, "base": 2}},
     r"a log-uniform draw is the same in every base"),
    ({"trainer.learning_rate": {"space": "quniform", "lower": 0.001, "upper": 0.1, "q": 0.01}},
     r"hyperopt.parameters.trainer.learning_rate: Your lower variable bound 0.001 is not divisible"),
])
def test_a_bad_parameter_is_a_config_error_before_ray_starts(tiny_bert, frame, tmp_path, monkeypatch, parameters,
                                                             message):
    from tunefork.hyperopt import search

    monkeypatch.setattr(search, "_cluster", lambda config: pytest.fail("Ray was started"))
    with pytest.raises(ConfigError, match=message):
        hyperopt(_config(tiny_bert, {"parameters": parameters}), frame, output_directory=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize(("section", "message"), [
    ({"output_feature": "combined", "metric": "accuracy"}, r"the combined output reports loss only"),
    ({"metric": "acuracy"}, r"'acuracy' is not reported for 'sentiment' .*did you mean 'accuracy'"),
    ({"output_feature": "sentimnt"}, r"did you mean 'sentiment'"),
])
def test_the_metric_must_be_one_the_output_reports(tiny_bert, frame, tmp_path, section, message):
    config = _config(tiny_bert, GRID)
    config["hyperopt"].update(section)
    with pytest.raises(ConfigError, match=message):
        hyperopt(config, frame, output_directory=tmp_path)


def test_the_command_line_says_the_bad_path_in_one_line(tiny_bert, frame, tmp_path, capsys):
    import yaml

    from tunefork.cli import main

    path, data = tmp_path / "config.yaml", tmp_path / "data.csv"
    path.write_text(yaml.safe_dump(_config(tiny_bert, {"parameters": {"trainer.epoch": {
        "space": "choice", "categories": [1, 2]}}})))
    frame.to_csv(data, index=False)
    assert main(["hyperopt", "-c", str(path), "--dataset", str(data), "--output_directory", str(tmp_path / "o")]) == 2
    assert "did you mean 'trainer.epochs'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["check-config", str(path)]) == 2  # check-config and train check the section too
    assert "hyperopt.parameters.trainer.epoch: 'trainer.epoch' is not a config path" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ on Ray


@pytest.fixture(scope="module")
def grid_search(ray_cluster, tiny_bert, frame, tmp_path_factory):
    """The 2 × 2 grid, with the driver's encoder passes counted (the trials' are in their efficiency.json)."""
    from tunefork.encoders import embeddings

    calls, encode = [], embeddings.encode
    patch = pytest.MonkeyPatch()
    patch.setattr(embeddings, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    result = hyperopt(_config(tiny_bert, GRID), frame, output_directory=tmp_path_factory.mktemp("grid"))
    patch.undo()
    return result, calls


def test_a_grid_equals_separate_train_runs_with_the_same_values(grid_search, tiny_bert, frame, tmp_path):
    result, _ = grid_search
    records = result.statistics["hyperopt_results"]
    assert sorted((r["parameters"]["trainer.learning_rate"], r["parameters"]["combiner.output_size"])
                  for r in records) == [(0.001, 8), (0.001, 16), (0.03, 8), (0.03, 16)]
    assert {r["status"] for r in records} == {"completed"}
    for record in records:
        config = _config(tiny_bert, {})
        del config["hyperopt"]
        config["trainer"]["learning_rate"] = record["parameters"]["trainer.learning_rate"]
        config["combiner"] = {"output_size": record["parameters"]["combiner.output_size"]}
        alone = Model(config, quiet=True).train(frame, output_directory=tmp_path, model_name=record["trial_id"])
        for split in ("training", "validation", "test"):
            for metric in ("loss", "accuracy"):
                np.testing.assert_allclose(record["training_stats"][split]["sentiment"][metric],
                                           alone.statistics[split]["sentiment"][metric], rtol=0, atol=1e-6)
        assert record["metric_score"] == pytest.approx(max(alone.statistics["validation"]["sentiment"]["accuracy"]))
    scores = [r["metric_score"] for r in records]
    assert scores == sorted(scores, reverse=True)  # best first
    assert result.best["trial_id"] == records[0]["trial_id"]


def test_the_frozen_encoder_runs_once_for_the_whole_search(grid_search):
    result, calls = grid_search
    assert len(calls) == 1  # the driver's warm-up, before any trial
    assert result.statistics["search"]["work_done_once"] == {"variants": 1, "preprocessing_passes": 1,
                                                             "encoder_passes": 1}
    for record in result.statistics["hyperopt_results"]:
        efficiency = json.loads((result.folder / "trials" / f"trial_{record['trial_id']}" / "efficiency.json").read_text())
        assert efficiency["embedding_cache_hit"] == {"review": True}  # loaded the vectors, never ran the encoder
        assert efficiency["preprocessing_cache_hit"] is True


def test_the_search_folder_holds_a_run_per_trial_statistics_and_a_report(grid_search, tmp_path):
    from tunefork.cli import main

    result, _ = grid_search
    trials = sorted(p.name for p in (result.folder / "trials").iterdir())
    assert trials == sorted(f"trial_{r['trial_id']}" for r in result.statistics["hyperopt_results"])
    for name in trials:
        assert (result.folder / "trials" / name / "model" / "model.safetensors").is_file()
    written = json.loads((result.folder / "hyperopt_statistics.json").read_text())
    assert written["hyperopt_config"]["metric"] == "accuracy" and len(written["hyperopt_results"]) == 4
    page = (result.folder / "report.html").read_text()
    assert page.index(result.best["trial_id"]) < page.index(written["hyperopt_results"][-1]["trial_id"])
    assert page.count("<img") == 3  # accuracy against each of 2 parameters, and the best trials' curves
    assert main(["visualize", "-v", "hyperopt_report", "-r", str(result.folder), "-od", str(tmp_path / "viz")]) == 0
    assert sorted(f.name for f in (tmp_path / "viz").iterdir()) == [
        "hyperopt_combiner.output_size.png", "hyperopt_pairs.png", "hyperopt_trainer.learning_rate.png"]
    assert main(["visualize", "-v", "hyperopt_hiplot", "-r", str(result.folder)]) == 2  # no maintained library


def test_asha_stops_a_bad_trial_early(ray_cluster, tiny_bert, frame, tmp_path):
    # the careful learning rates set the rungs' records first (one trial at a time); the large ones do worse at the
    # first rung and are stopped there
    search = {"goal": "minimize", "output_feature": "combined", "metric": "loss",
              "parameters": {"trainer.learning_rate": {"space": "grid_search", "values": [1e-6, 2e-6, 0.3, 0.5]}},
              "executor": {"num_samples": 1, "max_concurrent_trials": 1, "scheduler": {
                  "type": "async_hyperband", "grace_period": 1, "reduction_factor": 2, "max_t": 4}}}
    result = Model(_config(tiny_bert, search, epochs=4), quiet=True).hyperopt(frame, output_directory=tmp_path)
    by_lr = {r["parameters"]["trainer.learning_rate"]: r for r in result.statistics["hyperopt_results"]}
    assert by_lr[1e-6]["status"] == "completed" and by_lr[1e-6]["evaluations"] == 4
    assert os.path.isdir(os.path.join(by_lr[1e-6]["run_directory"], "model"))  # reaching max_t still saves
    stopped = [r for r in by_lr.values() if r["status"] == "stopped"]
    assert {0.3, 0.5} <= {r["parameters"]["trainer.learning_rate"] for r in stopped}
    for record in stopped:
        assert record["evaluations"] < 4 and record["metric_score"] >= result.best["metric_score"]
        assert not os.path.isdir(os.path.join(record["run_directory"], "model"))


def test_a_failing_trial_is_recorded_and_the_search_goes_on(ray_cluster, tiny_bert, frame, tmp_path):
    # 4096 tokens is past the tiny model's 128 positions: a value only the model's config.json refuses, in the trial
    search = {"parameters": {"input_features.review.preprocessing.max_sequence_length": {
        "space": "grid_search", "values": [12, 4096]}}}
    result = hyperopt(_config(tiny_bert, search), frame, output_directory=tmp_path)
    by_length = {r["parameters"]["input_features.review.preprocessing.max_sequence_length"]: r
                 for r in result.statistics["hyperopt_results"]}
    assert by_length[4096]["status"] == "failed" and by_length[4096]["metric_score"] is None
    assert "max_sequence_length: 4096 is more than the 128 positions" in by_length[4096]["error"]
    assert by_length[12]["status"] == "completed" and result.best["trial_id"] == by_length[12]["trial_id"]
    # the distinct preprocessing value that works was preprocessed and embedded once, before the trials
    assert result.statistics["search"]["work_done_once"] == {"variants": 1, "preprocessing_passes": 1,
                                                             "encoder_passes": 1}


def test_the_time_budget_stops_the_search_with_the_best_so_far(ray_cluster, tiny_bert, frame, tmp_path):
    # 3,000 epochs (no early stop) would take minutes; the budget stops the trial with its evaluations so far kept
    search = {"parameters": {"trainer.learning_rate": {"space": "grid_search", "values": [0.01, 0.02]}},
              "executor": {"num_samples": 1, "max_concurrent_trials": 1, "time_budget_s": 25}}
    config = _config(tiny_bert, search, epochs=3000)
    config["trainer"]["early_stop"] = -1
    result = hyperopt(config, frame, output_directory=tmp_path)
    search_record = result.statistics["search"]
    assert search_record["time_budget_reached"] and search_record["completed"] == 0
    assert result.best is not None and result.best["status"] == "stopped" and result.best["evaluations"] >= 1
    assert json.loads((result.folder / "hyperopt_statistics.json").read_text())["best"] == result.best


def _until_its_trials_are_gone(seconds: float = 60) -> None:
    """On a cluster that outlives the search, a killed search's trial actors run on until Ray notices their driver
    is dead; a resume that starts before then races them for the trial's run directory."""
    from ray._private import (
        state,  # the GCS's actor table: the state API needs the dashboard, which tests do not start
    )

    def alive() -> bool:
        return any(a.get("State") in ("ALIVE", "PENDING_CREATION", "RESTARTING") and "ImplicitFunc" in
                   str(a.get("ActorClassName")) for a in state.actors().values())

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        time.sleep(0.5)


def _saved(trials: Path) -> bool:
    """A trial has saved its model: the kill lands before Tune has recorded it (Tune then holds no result for it)."""
    return any(trials.glob("*/model"))


def _training_the_next(trials: Path) -> bool:
    """A trial has saved its model and the next one is training."""
    return _saved(trials) and any((p / "checkpoints").is_dir() and not (p / "model").exists() for p in trials.iterdir())


@pytest.mark.parametrize("moment", [_saved, _training_the_next], ids=["after-a-save", "in-the-next-trial"])
def test_a_killed_search_resumes_without_redoing_finished_trials(ray_cluster, tiny_bert, frame, tmp_path, moment):
    search = {"parameters": {"trainer.learning_rate": {"space": "grid_search", "values": [0.01, 0.02, 0.03]}},
              "executor": {"num_samples": 1, "max_concurrent_trials": 1}}
    config, data = _config(tiny_bert, search, epochs=3), tmp_path / "data.csv"
    frame.to_csv(data, index=False)
    (tmp_path / "config.json").write_text(json.dumps(config))
    script = ("import json, sys; from tunefork.hyperopt import hyperopt; "
              "hyperopt(json.load(open(sys.argv[1])), sys.argv[2], output_directory=sys.argv[3], quiet=True)")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "PYTHONPATH": os.pathsep.join(sys.path)}
    driver = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "config.json"), str(data),
                               str(tmp_path / "out")], env=env)
    trials, deadline = tmp_path / "out" / "hyperopt" / "trials", time.monotonic() + 240
    while not moment(trials) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    _until_its_trials_are_gone()  # Ray ends a dead driver's trial actors a few seconds later, not at once
    finished = {p.parent.name: p.stat().st_mtime_ns for p in trials.glob("*/model")}
    assert finished and len(finished) < 3, "the kill came after every trial had finished"
    result = hyperopt(config, data, output_directory=tmp_path / "out", resume=True)
    records = result.statistics["hyperopt_results"]
    assert [r["status"] for r in records] == ["completed"] * 3
    assert [r["evaluations"] for r in records] == [3] * 3  # one score per epoch, not one per attempt
    assert sorted(Path(r["run_directory"]).name for r in records) == sorted(p.name for p in trials.iterdir())
    for name, mtime in finished.items():
        assert (trials / name / "model").stat().st_mtime_ns == mtime  # not trained again
    with pytest.raises(Exception, match="finished; start a new one"):
        hyperopt(config, data, output_directory=tmp_path / "out", resume=True)


# ------------------------------------------------------------------------------------------------ every search key

UNIFORM = {"space": "uniform", "lower": 0.001, "upper": 0.1}
NO_RANGE = {"lower": None, "upper": None}
SCHEDULERS = {"async_hyperband": {"time_attr": "time_total_s", "max_t": 50, "grace_period": 2, "reduction_factor": 3,
                                  "brackets": 2},
              "hyperband": {"time_attr": "time_total_s", "max_t": 40, "reduction_factor": 4, "stop_last_trials": False},
              "median_stopping_rule": {"time_attr": "time_total_s", "grace_period": 2, "min_samples_required": 5,
                                       "min_time_slice": 1, "hard_stop": False}}
# key → (the section's context, the key moved off its default); the section is merged over a one-parameter search
SEARCH_KEYS = {
    "hyperopt.goal": ({}, {"goal": "minimize"}),
    "hyperopt.output_feature": ({"metric": "loss"}, {"output_feature": "combined"}),
    "hyperopt.metric": ({}, {"metric": "loss"}),
    "hyperopt.split": ({}, {"split": "test"}),
    "hyperopt.parameters{}.space": ({}, {"parameters": {"p": {"space": "loguniform"}}}),
    "hyperopt.parameters{}.categories": ({"parameters": {"p": {"space": "choice", **NO_RANGE, "categories": [1, 2]}}},
                                         {"parameters": {"p": {"categories": [1, 3]}}}),
    "hyperopt.parameters{}.values": ({"parameters": {"p": {"space": "grid_search", **NO_RANGE, "values": [1, 2]}}},
                                     {"parameters": {"p": {"values": [1, 3]}}}),
    "hyperopt.parameters{}.lower": ({}, {"parameters": {"p": {"lower": 0.002}}}),
    "hyperopt.parameters{}.upper": ({}, {"parameters": {"p": {"upper": 0.2}}}),
    "hyperopt.parameters{}.q": ({"parameters": {"p": {"space": "quniform", "lower": 0.0, "q": 0.001}}},
                                {"parameters": {"p": {"q": 0.01}}}),
    "hyperopt.parameters{}.mean": ({"parameters": {"p": {"space": "randn", **NO_RANGE}}},
                                   {"parameters": {"p": {"mean": 1}}}),
    "hyperopt.parameters{}.sd": ({"parameters": {"p": {"space": "randn", **NO_RANGE}}}, {"parameters": {"p": {"sd": 2}}}),
    "hyperopt.search_alg.type": ({}, {"search_alg": {"type": "hyperopt"}}),
    "hyperopt.search_alg[variant_generator].random_state_seed": ({}, {"search_alg": {"random_state_seed": 3}}),
    "hyperopt.search_alg[hyperopt].random_state_seed": ({"search_alg": {"type": "hyperopt"}},
                                                        {"search_alg": {"type": "hyperopt", "random_state_seed": 3}}),
    "hyperopt.search_alg[hyperopt].n_initial_points": ({"search_alg": {"type": "hyperopt"}},
                                                       {"search_alg": {"type": "hyperopt", "n_initial_points": 5}}),
    "hyperopt.search_alg[hyperopt].gamma": ({"search_alg": {"type": "hyperopt"}},
                                            {"search_alg": {"type": "hyperopt", "gamma": 0.5}}),
    "hyperopt.search_alg[optuna].random_state_seed": ({"search_alg": {"type": "optuna"}},
                                                      {"search_alg": {"type": "optuna", "random_state_seed": 3}}),
    "hyperopt.search_alg[optuna].n_startup_trials": ({"search_alg": {"type": "optuna"}},
                                                     {"search_alg": {"type": "optuna", "n_startup_trials": 3}}),
    "hyperopt.executor.num_samples": ({}, {"executor": {"num_samples": 3}}),
    "hyperopt.executor.time_budget_s": ({}, {"executor": {"time_budget_s": 60}}),
    "hyperopt.executor.cpu_resources_per_trial": ({}, {"executor": {"cpu_resources_per_trial": 2}}),
    "hyperopt.executor.gpu_resources_per_trial": ({}, {"executor": {"gpu_resources_per_trial": 1}}),
    "hyperopt.executor.max_concurrent_trials": ({}, {"executor": {"max_concurrent_trials": 1}}),
    "hyperopt.executor.scheduler.type": ({}, {"executor": {"scheduler": {"type": "async_hyperband"}}}),
    **{f"hyperopt.executor.scheduler[{kind}].{key}": (
        {"executor": {"scheduler": {"type": kind}}}, {"executor": {"scheduler": {"type": kind, key: value}}})
       for kind, keys in SCHEDULERS.items() for key, value in keys.items()},
}


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return {k: v for k, v in out.items() if v is not None}


def _seen(value, depth: int = 0):
    """What Tune is handed, as plain data: settings, a domain's bounds and sampler, a random state's next draws."""
    import functools
    import types

    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_seen(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _seen(v, depth + 1) for k, v in value.items()}
    if isinstance(value, functools.partial):
        return {"partial": value.func.__name__, **_seen(value.keywords, depth + 1)}
    if hasattr(value, "get_state") and hasattr(value, "randint"):  # numpy's RandomState (optuna keeps one)
        return value.get_state()[1][:4].tolist()
    if hasattr(value, "bit_generator"):
        return str(value.bit_generator.state["state"])
    if depth < 7 and hasattr(value, "__dict__"):
        return {type(value).__name__: {k: _seen(v, depth + 1) for k, v in vars(value).items()
                                       if not isinstance(v, (type, types.FunctionType, types.MethodType))
                                       and "uuid" not in k}}  # a fresh id per object
    return type(value).__name__


def _given_to_tune(section: dict) -> dict:
    from tunefork.config.hyperopt import Hyperopt
    from tunefork.hyperopt import results, search, space

    hyperopt = Hyperopt.model_validate(section)
    return _seen({"space": space.tune_space(hyperopt.parameters), "settings": search.tune_settings(hyperopt, 42),
                  "resources": search.resources(hyperopt.executor, cluster_gpus=0),
                  "reported": (results.SPLITS[hyperopt.split], hyperopt.output_feature, hyperopt.metric)})


def test_every_search_key_is_covered():
    from test_every_key import LEAVES

    walked = {k for k in LEAVES["ecd"] if k.startswith("hyperopt.")}
    assert walked == {*SEARCH_KEYS, "hyperopt.parameters{}.base"}  # base: refused (test_a_bad_parameter_...)


@pytest.mark.parametrize("key", sorted(SEARCH_KEYS))
def test_every_search_key_changes_what_tune_is_given(key):
    base = {"goal": "maximize", "output_feature": "sentiment", "metric": "accuracy", "parameters": {"p": UNIFORM}}
    context, moved = SEARCH_KEYS[key]
    default = _merged(base, context)
    assert _given_to_tune(default) == _given_to_tune(default)  # nothing in the comparison varies by itself
    assert _given_to_tune(default) != _given_to_tune(_merged(default, moved))


def test_auto_gives_each_trial_a_gpu_only_where_the_cluster_has_them():
    from tunefork.config.hyperopt import Executor
    from tunefork.hyperopt import search

    assert search.resources(Executor(), cluster_gpus=2) == {"cpu": 1, "gpu": 1}
    assert search.resources(Executor(), cluster_gpus=0) == {"cpu": 1, "gpu": 0}
    assert search.resources(Executor(gpu_resources_per_trial=0.5), cluster_gpus=2)["gpu"] == 0.5


def test_an_llm_config_is_searched_by_the_same_paths():
    """A causal LM's section reads its own keys: `adapter.r` at the top, the output's metrics (loss, perplexity)."""
    from tunefork.config import load
    from tunefork.hyperopt import paths
    from tunefork.plan import reported_metrics

    raw = {"model_type": "llm", "base_model": "/models/tiny", "input_features": [{"name": "instruction", "type": "text"}],
           "output_features": [{"name": "output", "type": "text"}], "adapter": {"type": "lora"},
           "trainer": {"type": "finetune"}, "hyperopt": {"output_feature": "output", "metric": "perplexity", "parameters": {
               "adapter.r": {"space": "choice", "categories": [4, 8]},
               "trainer.learning_rate": {"space": "loguniform", "lower": 1e-4, "upper": 1e-2}}}}
    config = load(raw)
    paths.check(config, raw)
    paths.check_metric(config, reported_metrics)
    assert load(paths.apply(raw, {"adapter.r": 8})).adapter.r == 8
    raw["hyperopt"]["parameters"] = {"adapter.rank": {"space": "choice", "categories": [4, 8]}}
    with pytest.raises(ConfigError, match=r"'adapter.rank' is not a config path"):
        paths.check(load(raw), raw)
    raw["hyperopt"]["metric"] = "accuracy"
    with pytest.raises(ConfigError, match=r"'accuracy' is not reported for 'output'"):
        paths.check_metric(load(raw), reported_metrics)
