"""Whole runs through the Python API on tiny models: what is learnt, what is written, what reloads, what repeats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import sentiment_frame

from tunefork import Model, config

TRAINER = {"epochs": 3, "batch_size": 8, "learning_rate": 0.003, "early_stop": -1}


def text_input(model: Path, **encoder) -> dict:
    return {"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 32},
            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(model), **encoder}}


def multi_config(model: Path) -> dict:
    return {
        "input_features": [text_input(model, trainable=True), {"name": "genre", "type": "category"},
                           {"name": "length", "type": "number"}],
        "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"},
                            {"name": "recommended", "type": "binary"}],
        "trainer": TRAINER,
    }


def tabular_config(**trainer) -> dict:
    """No transformer: runs in well under a second, for the checks about the loop itself."""
    return {
        "input_features": [{"name": "genre", "type": "category"}, {"name": "length", "type": "number"},
                           {"name": "score", "type": "number"}],
        "output_features": [{"name": "sentiment", "type": "category"}],
        "trainer": {"epochs": 2, "batch_size": 10, "learning_rate": 0.01, "early_stop": -1, **trainer},
    }


def train(cfg: dict, data, out: Path, **kwargs):
    model = Model(cfg, progress=False, quiet=True)
    return model, model.train(data, output_directory=out, **kwargs)


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    """Text + category + number in, category + number + binary out, trained once for the whole module."""
    out = tmp_path_factory.mktemp("results")
    model, result = train(multi_config(tiny_bert), sentiment_frame(200, seed=0), out)
    return model, result, out


# ---------------------------------------------------------------------------------------------- it learns


def test_multi_input_multi_output_learns(trained):
    model, result, _ = trained
    training = result.statistics["training"]
    assert len(training["combined"]["loss"]) == 3  # one evaluation per epoch
    assert training["combined"]["loss"][-1] < 0.6 * training["combined"]["loss"][0]
    scores = model.evaluate(sentiment_frame(120, seed=77))
    assert scores["sentiment"]["accuracy"] > 0.9  # chance is 0.5
    assert scores["recommended"]["accuracy"] > 0.9
    assert scores["score"]["r2"] > 0.5  # the score follows the sentiment
    assert np.sum(scores["sentiment"]["confusion_matrix"]) == 120


def test_run_directory_contents(trained):
    _, result, out = trained
    run = result.output_directory
    assert run == out / "experiment_run"
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    for name in ("model/model.safetensors", "model/model_hyperparameters.json", "model/training_set_metadata.json",
                 "model/tokenizers/review/tokenizer.json", "model/encoders/review/config.json",
                 "training_statistics.json", "description.json", "efficiency.json", "resolved_config.yaml"):
        assert name in files
    assert not [p for p in files if p.endswith((".bin", ".pt", ".pkl", ".tmp"))]  # safetensors only, nothing half-written
    assert not list(out.glob(".*")) and not list(run.rglob(".*"))

    saved = config.load(json.loads((run / "model/model_hyperparameters.json").read_text()))
    assert saved == config.load(multi_config(tiny_bert_path(run)))
    meta = json.loads((run / "model/training_set_metadata.json").read_text())
    assert sorted(meta["outputs"]["sentiment"]["vocab"]) == ["negative", "positive"]
    assert meta["outputs"]["recommended"]["labels"] == ["no", "yes"]
    assert meta["inputs"]["genre"]["vocab"][0] == "<UNK>"
    assert meta["pooling"] == {"review": "mean"}
    description = json.loads((run / "description.json").read_text())
    assert description["random_seed"] == 42
    assert sum(description["rows"].values()) == 200
    assert set(description["dataset_fingerprints"]) == {"training", "validation", "test"}
    assert description["versions"]["torch"] == torch.__version__


def tiny_bert_path(run: Path) -> Path:
    saved = json.loads((run / "model/model_hyperparameters.json").read_text())
    return Path(saved["input_features"][0]["encoder"]["pretrained_model_name_or_path"])


def test_efficiency_record(trained):
    _, result, _ = trained
    efficiency = json.loads((result.output_directory / "efficiency.json").read_text())
    assert efficiency == json.loads(json.dumps(result.efficiency))
    assert {"read", "preprocess", "train", "evaluate"} <= set(efficiency["seconds"])
    assert all(v >= 0 for v in efficiency["seconds"].values())
    assert efficiency["train_examples"] == 3 * 140  # 200 rows × 0.7 training, 3 epochs
    assert efficiency["train_examples_per_second"] > 0 and efficiency["train_tokens_per_second"] > 0
    assert efficiency["peak_rss_mb"] > 50
    assert (efficiency["device"], efficiency["precision"]) == ("cpu", "fp32")
    assert efficiency["final_validation"]["split"] == "validation"
    assert efficiency["final_validation"]["value"] == min(result.statistics["validation"]["combined"]["loss"])


def test_resolved_config_explains_every_decision(trained):
    model, result, _ = trained
    resolved = yaml.safe_load((result.output_directory / "resolved_config.yaml").read_text())
    assert config.load(resolved["config"]) == model.config
    plan = resolved["plan"]
    assert plan["batch_size"] == {"value": 8, "reason": "trainer.batch_size"}
    assert plan["steps_per_epoch"]["value"] == 18  # ceil(140 / 8)
    assert plan["total_steps"]["value"] == 54
    assert plan["pooling.review"] == {"value": "mean", "reason": "auto: mean over real tokens (padding excluded)"}
    assert all(isinstance(d["reason"], str) and d["reason"] for d in plan.values())


def test_training_statistics_file(trained):
    _, result, _ = trained
    statistics = json.loads((result.output_directory / "training_statistics.json").read_text())
    assert statistics == json.loads(json.dumps(result.statistics))
    assert [e["epoch"] for e in statistics["evaluations"]] == [1, 2, 3]
    assert [e["step"] for e in statistics["evaluations"]] == [18, 36, 54]
    for split in ("training", "validation", "test"):
        assert set(statistics[split]) == {"sentiment", "score", "recommended", "combined"}
        assert {"loss", "accuracy", "macro_f1", "roc_auc"} <= set(statistics[split]["sentiment"])
        assert {"mean_absolute_error", "root_mean_squared_error", "r2"} <= set(statistics[split]["score"])
        assert all(len(v) == 3 for v in statistics[split]["sentiment"].values())
    assert statistics["best"]["metric"] == "loss" and statistics["best"]["field"] == "combined"


# --------------------------------------------------------------------------------------------- predictions


def test_predict_columns(trained):
    model, _, _ = trained
    rows = sentiment_frame(10, seed=3)
    predictions = model.predict(rows.drop(columns=["sentiment", "score", "recommended"]))
    assert list(predictions.columns) == [
        "sentiment_predictions", "sentiment_probabilities_negative", "sentiment_probabilities_positive",
        "sentiment_probability", "score_predictions",
        "recommended_predictions", "recommended_probabilities_no", "recommended_probabilities_yes",
        "recommended_probability",
    ]
    assert len(predictions) == 10 and predictions.index.tolist() == list(range(10))
    probabilities = predictions[["sentiment_probabilities_negative", "sentiment_probabilities_positive"]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(predictions["sentiment_probability"], probabilities.max(1))
    assert set(predictions["sentiment_predictions"]) <= {"negative", "positive"}
    assert set(predictions["recommended_predictions"]) <= {"yes", "no"}
    assert predictions["score_predictions"].dtype == np.float32 or predictions["score_predictions"].dtype == np.float64
    # the model learnt the task: its predictions mostly match the truth
    assert (predictions["sentiment_predictions"] == rows["sentiment"]).mean() >= 0.9


def test_predictions_do_not_depend_on_batch_company(trained):
    """Padding never changes a row's prediction: alone or with longer rows, the same probabilities."""
    model, _, _ = trained
    rows = sentiment_frame(12, seed=4)
    together = model.predict(rows)
    alone = pd.concat([model.predict(rows.iloc[[i]]) for i in range(len(rows))], ignore_index=True)
    np.testing.assert_allclose(together["sentiment_probabilities_positive"], alone["sentiment_probabilities_positive"],
                               rtol=1e-5, atol=1e-6)


def test_unseen_category_at_predict_time(trained):
    model, _, _ = trained
    rows = sentiment_frame(4, seed=5).assign(genre=["western", "drama", "musical", ""])
    predictions = model.predict(rows)
    assert len(predictions) == 4
    assert np.isfinite(predictions["sentiment_probability"]).all()
    scores = model.evaluate(rows.assign(sentiment=["positive", "neutral", "negative", "positive"]))
    # 'neutral' is no class the model knows: scored as wrong, never a crash
    assert np.sum(scores["sentiment"]["confusion_matrix"]) == 3


def test_save_then_load_in_a_fresh_process_gives_identical_probabilities(trained, tmp_path):
    model, result, _ = trained
    rows = sentiment_frame(20, seed=6)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    expected = model.predict(tmp_path / "rows.csv")
    saved = model.save(tmp_path / "saved")
    assert (saved / "model.safetensors").is_file() and not list(tmp_path.glob(".*"))
    # one fresh interpreter loads both a model folder and a run directory (torch imports once)
    code = ("import sys; from tunefork import Model\n"
            "for i, folder in enumerate(sys.argv[2:]): Model.load(folder).predict(sys.argv[1]).to_parquet(f'{sys.argv[1]}.{i}.parquet')")
    folders = [saved, result.output_directory]
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "rows.csv"), *map(str, folders)], check=True,
                   capture_output=True, timeout=120)
    for i in range(len(folders)):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"rows.csv.{i}.parquet"), expected, check_exact=True)


def test_same_seed_gives_identical_metrics_and_weights(trained, tiny_bert, tmp_path):
    _, first, _ = trained
    _, second = train(multi_config(tiny_bert), sentiment_frame(200, seed=0), tmp_path)
    assert second.statistics == first.statistics
    a = load_file(first.output_directory / "model/model.safetensors")
    b = load_file(second.output_directory / "model/model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_seed_gives_other_weights(tmp_path):
    data = sentiment_frame(100, seed=1)
    _, a = train(tabular_config(), data, tmp_path, random_seed=1)
    _, b = train(tabular_config(), data, tmp_path, random_seed=2)
    wa = load_file(a.output_directory / "model/model.safetensors")
    wb = load_file(b.output_directory / "model/model.safetensors")
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)
    assert b.output_directory.name == "experiment_run_1"  # the next free name, never an overwrite


# ------------------------------------------------------------------------------------------------ decoders


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama", "tiny_llama_padded"])
def test_decoder_only_encoder_pools_the_last_token(model_fixture, request, tmp_path):
    folder = request.getfixturevalue(model_fixture)
    cfg = {"input_features": [text_input(folder, trainable=True)], "output_features": [{"name": "sentiment", "type": "category"}],
           "trainer": {**TRAINER, "epochs": 2}}
    model, result = train(cfg, sentiment_frame(120, seed=2), tmp_path)
    plan = yaml.safe_load((result.output_directory / "resolved_config.yaml").read_text())["plan"]
    assert plan["pooling.review"] == {"value": "last", "reason": "auto: last real token of a decoder-only model"}
    losses = result.statistics["training"]["combined"]["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    meta = json.loads((result.output_directory / "model/training_set_metadata.json").read_text())
    fitted = meta["inputs"]["review"]
    if model_fixture == "tiny_llama_padded":
        assert (fitted["padding_side"], fitted["pad_token_id"]) == ("left", model.tokenizers["review"].convert_tokens_to_ids("<pad>"))
    else:  # no pad token of its own: padded with eos
        assert fitted["pad_token_id"] == model.tokenizers["review"].eos_token_id
    rows = sentiment_frame(8, seed=8)
    together = model.predict(rows)["sentiment_probabilities_positive"]
    alone = pd.concat([model.predict(rows.iloc[[i]]) for i in range(len(rows))])["sentiment_probabilities_positive"]
    np.testing.assert_allclose(together.to_numpy(), alone.to_numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- frozen encoder


def test_frozen_encoder_weights_do_not_change_but_the_head_does(tiny_bert, tmp_path):
    from transformers import AutoModel

    from tunefork.models.ecd import ECD

    cfg = {"input_features": [text_input(tiny_bert, trainable=False)], "output_features": [{"name": "sentiment", "type": "category"}],
           "trainer": {**TRAINER, "epochs": 2}}
    model, result = train(cfg, sentiment_frame(120, seed=2), tmp_path)
    original = AutoModel.from_pretrained(tiny_bert).state_dict()
    saved = load_file(result.output_directory / "model/model.safetensors")
    prefix = "encoders.review.transformer."
    transformer = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
    assert transformer.keys() == original.keys()
    assert all(torch.equal(transformer[k], original[k]) for k in original)

    torch.manual_seed(42)  # the heads as they were before the first step
    initial = ECD(model.config, model.meta, model.meta["pooling"]).state_dict()
    heads = [k for k in saved if k.startswith("heads.")]
    assert heads and any(not torch.equal(saved[k], initial[k]) for k in heads)


# ------------------------------------------------------------------------------------------------ the loop


@pytest.mark.parametrize(("evaluate_training_set", "source"), [
    (True, "a full evaluation pass over the training set after each evaluation"),
    (False, "running aggregate of the training batches since the previous evaluation (approximate)"),
])
def test_evaluate_training_set_is_recorded(evaluate_training_set, source, tmp_path):
    model, result = train(tabular_config(evaluate_training_set=evaluate_training_set), sentiment_frame(100, seed=1), tmp_path)
    statistics = json.loads((result.output_directory / "training_statistics.json").read_text())
    assert statistics["training_metrics"] == source
    assert len(statistics["training"]["sentiment"]["accuracy"]) == 2


def test_evaluate_training_set_true_matches_a_separate_evaluation(tmp_path):
    data = sentiment_frame(100, seed=1)
    cfg = tabular_config(evaluate_training_set=True, epochs=1)
    cfg["preprocessing"] = {"split": {"type": "fixed"}}
    data = data.assign(split=[0] * 80 + [1] * 10 + [2] * 10)
    model, result = train(cfg, data, tmp_path)
    again = model.evaluate(data.iloc[:80])
    assert result.statistics["training"]["sentiment"]["accuracy"] == [pytest.approx(again["sentiment"]["accuracy"])]
    assert result.statistics["training"]["combined"]["loss"] == [pytest.approx(again["combined"]["loss"], rel=1e-5)]


def test_validation_metric_not_reported_for_the_field_stops_before_anything_is_written(tmp_path):
    cfg = tabular_config(validation_field="sentiment", validation_metric="r2")
    with pytest.raises(config.ConfigError, match="trainer.validation_metric: 'r2' is not reported for 'sentiment'"):
        train(cfg, sentiment_frame(50, seed=1), tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_early_stopping_stops_before_epochs(tmp_path):
    # a learning rate too small to move any weight: the validation loss never improves after the first evaluation
    model, result = train(tabular_config(epochs=50, early_stop=2, learning_rate=1e-12), sentiment_frame(100, seed=1), tmp_path)
    evaluations = result.statistics["evaluations"]
    assert [e["epoch"] for e in evaluations] == [1, 2, 3]
    assert result.statistics["best"]["evaluation"] == 0
    assert result.efficiency["train_examples"] == 3 * 70


def test_steps_per_checkpoint_evaluates_at_those_steps(tmp_path):
    cfg = tabular_config(steps_per_checkpoint=5, epochs=2)
    cfg["preprocessing"] = {"split": {"probabilities": [0.8, 0.1, 0.1]}}
    model, result = train(cfg, sentiment_frame(100, seed=1), tmp_path)  # 80 rows / 10 = 8 steps an epoch
    evaluations = result.statistics["evaluations"]
    assert [e["step"] for e in evaluations] == [5, 10, 15, 16]  # and the last step, whatever it is
    assert [e["epoch"] for e in evaluations] == [1, 2, 2, 2]
    assert len(result.statistics["validation"]["combined"]["loss"]) == 4


def test_train_steps_overrides_epochs(tmp_path):
    model, result = train(tabular_config(train_steps=3, epochs=100), sentiment_frame(100, seed=1), tmp_path)
    assert result.plan["total_steps"]["value"] == 3
    assert [e["step"] for e in result.statistics["evaluations"]] == [3]
    assert result.efficiency["train_examples"] == 30


def test_best_weights_are_restored(tmp_path):
    """The saved model is the one the validation metric chose, not the last one."""
    cfg = tabular_config(epochs=6, learning_rate=0.3, validation_field="sentiment", validation_metric="accuracy")
    model, result = train(cfg, sentiment_frame(100, seed=1), tmp_path)
    best = result.statistics["best"]
    assert best["value"] == max(result.statistics["validation"]["sentiment"]["accuracy"])
    from tunefork.data import split

    # the split is internal: rebuild it the way the run did
    validation_rows = split.split(sentiment_frame(100, seed=1), model.config.preprocessing.split, 42)["validation"]
    assert model.evaluate(validation_rows)["sentiment"]["accuracy"] == pytest.approx(best["value"])
