"""`LudwigModel`: scripts written as Ludwig's getting-started and API pages write them, run with only their import
changed, on tiny local models; what they return, the columns they see and the files they leave are checked."""

from __future__ import annotations

import json
import logging
import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny import sentiment_frame

from tunefork import LudwigModel
from tunefork.errors import TuneforkError

LUDWIG_IMPORT = "from ludwig.api import LudwigModel"

TABULAR = {
    "input_features": [{"name": "genre", "type": "category"}, {"name": "score", "type": "number"}],
    "output_features": [{"name": "sentiment", "type": "category"}, {"name": "recommended", "type": "binary"}],
    "trainer": {"epochs": 3, "batch_size": 16, "learning_rate": 0.02, "early_stop": -1},
}


def run_script(script: str, cwd: Path, **names) -> dict:
    """Run a Ludwig script in `cwd` with its one import changed to tunefork's; returns the script's variables."""
    source = textwrap.dedent(script)
    assert source.count(LUDWIG_IMPORT) == 1
    here = os.getcwd()
    os.chdir(cwd)
    try:
        scope = dict(names)
        exec(compile(source.replace(LUDWIG_IMPORT, "from tunefork import LudwigModel"), "ludwig_script", "exec"), scope)
        return scope
    finally:
        os.chdir(here)


# ------------------------------------------------------------------------------------------------ the API page
API_PAGE = """
import logging
from ludwig.api import LudwigModel

model = LudwigModel(config=config, logging_level=logging.INFO)
train_stats, preprocessed_data, output_directory = model.train(training_set=train_df, test_set=test_df)
test_stats, predictions, output_directory = model.evaluate(
  eval_df,
  collect_predictions=True,
  collect_overall_stats=True,
  skip_save_eval_stats=False,
  skip_save_predictions=False,
  output_directory="test_results",
  return_type="dict"
)
predictions_df, prediction_results = model.predict(dataset=eval_df, skip_save_predictions=False,
                                                   output_directory="predictions_results")
model.save("saved_model")
loaded = LudwigModel.load("saved_model")
loaded_predictions, _ = loaded.predict(dataset=eval_df)
"""


@pytest.fixture(scope="module")
def api_page(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("api_page")
    frame = sentiment_frame(240, seed=1)
    scope = run_script(API_PAGE, cwd, config=TABULAR, train_df=frame[:160], test_df=frame[160:200],
                       eval_df=frame[200:].reset_index(drop=True))
    return scope, cwd


def test_train_returns_ludwig_statistics_one_value_per_epoch(api_page):
    scope, cwd = api_page
    stats = scope["train_stats"]
    assert len(stats.training["sentiment"]["loss"]) == 3 and len(stats.test["recommended"]["accuracy"]) == 3
    assert stats["test"] is stats.test and stats.validation == {}  # no validation set was given
    assert (stats.evaluation_frequency.frequency, stats.evaluation_frequency.period) == (1.0, "epoch")
    run = cwd / "results" / "api_experiment_run"  # the script's output_directory is evaluate's by now
    written = json.loads((run / "training_statistics.json").read_text())
    assert written["test"]["sentiment"]["loss"] == stats.test["sentiment"]["loss"]
    training_set, validation_set, test_set, metadata = scope["preprocessed_data"]
    assert (len(training_set), validation_set, len(test_set)) == (160, None, 40)
    assert set(metadata["outputs"]["sentiment"]["vocab"]) == {"negative", "positive"}


def test_evaluate_returns_statistics_predictions_and_writes_its_files(api_page):
    scope, cwd = api_page
    stats, predictions, eval_df = scope["test_stats"], scope["predictions"], scope["eval_df"]
    probabilities = np.stack(predictions["sentiment"]["probabilities"])
    assert probabilities.shape == (40, 2) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    truth = eval_df["sentiment"].to_numpy()
    assert stats["sentiment"]["accuracy"] == pytest.approx((predictions["sentiment"]["predictions"] == truth).mean())
    assert stats["sentiment"]["accuracy"] > 0.9  # `score` tells the sentiment apart
    assert sum(map(sum, stats["sentiment"]["confusion_matrix"])) == 40  # collect_overall_stats
    assert scope["output_directory"] == "test_results"
    assert sorted(os.listdir(cwd / "test_results")) == ["predictions.csv", "test_statistics.json"]


def test_predict_has_ludwig_columns_and_a_saved_model_predicts_the_same(api_page):
    scope, cwd = api_page
    frame = scope["predictions_df"]
    classes = scope["model"].training_set_metadata["outputs"]["sentiment"]["vocab"]  # the model's class order
    assert list(frame.columns) == [
        "sentiment_predictions", "sentiment_probabilities", *(f"sentiment_probabilities_{c}" for c in classes),
        "sentiment_probability", "recommended_predictions", "recommended_probabilities",
        "recommended_probabilities_no", "recommended_probabilities_yes", "recommended_probability"]
    first = frame.iloc[0]
    assert first["sentiment_probabilities"] == pytest.approx([first[f"sentiment_probabilities_{c}"] for c in classes])
    assert first["sentiment_probability"] == pytest.approx(max(first["sentiment_probabilities"]))
    written = pd.read_csv(cwd / "predictions_results" / "predictions.csv")
    assert written["sentiment_predictions"].tolist() == frame["sentiment_predictions"].tolist()
    pd.testing.assert_frame_equal(scope["loaded_predictions"], frame)


def test_config_is_a_dict_that_builds_the_same_model_and_save_config_writes_it(api_page, tmp_path):
    model = api_page[0]["model"]
    assert isinstance(model.config, dict) and model.config["trainer"]["epochs"] == 3
    model.save_config(tmp_path)
    saved = json.loads((tmp_path / "model_hyperparameters.json").read_text())
    assert saved == model.config and LudwigModel(saved).config == model.config


# ------------------------------------------------------------------------------------------------ getting started
GETTING_STARTED = """
from ludwig.api import LudwigModel
import pandas

df = pandas.read_csv("rotten_tomatoes.csv")
model = LudwigModel(config="rotten_tomatoes.yaml")
results = model.train(dataset=df)
"""


def test_getting_started_script_trains_a_text_model_from_a_yaml_path(tiny_bert, tmp_path):
    config = {"input_features": [
        {"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 16},
         "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)}},
        {"name": "genre", "type": "category"}, {"name": "length", "type": "number"}],
        "output_features": [{"name": "recommended", "type": "binary"}],
        "trainer": {"epochs": 2, "batch_size": 16, "learning_rate": 0.003, "early_stop": -1}}
    (tmp_path / "rotten_tomatoes.yaml").write_text(yaml.safe_dump(config))
    sentiment_frame(120).to_csv(tmp_path / "rotten_tomatoes.csv", index=False)
    results = run_script(GETTING_STARTED, tmp_path)["results"]
    run = tmp_path / results.output_directory
    assert run == tmp_path / "results" / "api_experiment_run"
    assert {"model", "training_statistics.json", "description.json"} <= set(os.listdir(run))
    assert len(results.train_stats.validation["recommended"]["loss"]) == 2
    assert results.preprocessed_data.training_set_metadata["outputs"]["recommended"]["labels"] == ["no", "yes"]


# ------------------------------------------------------------------------------------------------ LLM, zero-shot
ZERO_SHOT = '''
import logging
import yaml
from ludwig.api import LudwigModel

config = yaml.safe_load(f"""
model_type: llm
base_model: {base_model}
generation:
    max_new_tokens: 4
prompt:
    task: "Classify the sample input as either negative, neutral, or positive."
input_features:
-
    name: review
    type: text
output_features:
-
    name: label
    type: category
    preprocessing:
        fallback_label: "neutral"
    decoder:
        type: category_extractor
        match:
            "negative":
                type: contains
                value: "negative"
            "neutral":
                type: contains
                value: "neutral"
            "positive":
                type: contains
                value: "positive"
""")
model = LudwigModel(config=config, logging_level=logging.INFO)
(train_stats, preprocessed_data, output_directory) = model.train(
    dataset=df, experiment_name="simple_experiment", model_name="simple_model", skip_save_processed_input=True
)
training_set, val_set, test_set, _ = preprocessed_data
preds, _ = model.predict(test_set, skip_save_predictions=False)
'''


def test_zero_shot_llm_script_predicts_its_test_split_and_generates(tiny_llama, tmp_path):
    labels = ["negative", "neutral", "positive"] * 10
    df = pd.DataFrame({"review": [f"review number {i}" for i in range(30)], "label": labels})
    scope = run_script(ZERO_SHOT, tmp_path, base_model=str(tiny_llama), df=df)
    preds, test_set = scope["preds"], scope["test_set"]
    assert list(preds.columns) == ["label_predictions", "label_response"] and len(preds) == len(test_set) == 6
    assert set(preds["label_predictions"]) <= {"negative", "neutral", "positive"}
    assert (tmp_path / "results" / "predictions.csv").is_file()
    assert (tmp_path / scope["output_directory"] / "model").is_dir()
    model = scope["model"]
    one = model.generate("review number 3")
    assert isinstance(one, str) and model.generate(["review number 3"]) == [one]  # greedy: repeatable
    longer = model.generate(["review number 1", "review number 2"])
    shorter = model.generate(["review number 1", "review number 2"], generation_config={"max_new_tokens": 1})
    assert all(long.startswith(short) for short, long in zip(shorter, longer, strict=True))  # greedy: a prefix
    assert sum(map(len, shorter)) < sum(map(len, longer))


# ------------------------------------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def untrained():
    return LudwigModel(TABULAR)


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: m.train(dataset=None, foo=1), "LudwigModel.train: unknown keyword 'foo'; remove it"),
    (lambda m: m.train(training_set_metadata={"a": 1}), "training_set_metadata={'a': 1} is not supported: tunefork "
                                                          "fits"),
    (lambda m: m.predict(pd.DataFrame(), split="test"), "split='test' is not supported: tunefork predicts every row"),
    (lambda m: m.predict(pd.DataFrame(), batch_size=64), "batch_size=64 is not supported: set trainer.eval_batch_size"),
    (lambda m: m.predict(pd.DataFrame(), skip_save_unprocessed_output=False), "tunefork writes no raw tensor"),
    (lambda m: m.predict(pd.DataFrame(), generation_config={"max_new_tokens": 1}), "only a model_type: llm"),
    (lambda m: m.experiment(eval_split="validation"), "eval_split='validation' is not supported"),
    (lambda m: m.generate("hello"), "generate: only a model_type: llm generates text; use predict()"),
    (lambda m: LudwigModel.load("anywhere", from_checkpoint=True), "from_checkpoint=True is not supported"),
    (lambda m: LudwigModel(TABULAR, backend="horovod"), "backend='horovod' is not supported: tunefork distributes "
                                                        "training with Ray Train (DDP or FSDP): use backend='ray'"),
    (lambda m: LudwigModel(TABULAR, gpu_memory_limit=0.5), "gpu_memory_limit=0.5 is not supported"),
    (lambda m: LudwigModel(TABULAR, callbacks=[object()]), "callbacks="),
])
def test_a_keyword_tunefork_cannot_honour_is_refused_by_name(untrained, call, message):
    with pytest.raises(TuneforkError) as caught:
        call(untrained)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine with a GPU honours gpus")
def test_gpus_on_a_machine_without_one_is_refused_and_leaves_the_environment_alone():
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    with pytest.raises(TuneforkError, match=r"gpus 0,1: this machine has no CUDA GPU, so tunefork runs on the CPU"):
        LudwigModel(TABULAR, gpus=[0, 1])
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before


def test_logging_level_sets_tunefork_logger_and_backend_ray_sets_the_config():
    LudwigModel(TABULAR, logging_level=logging.WARNING)
    assert logging.getLogger("tunefork").level == logging.WARNING
    assert LudwigModel(TABULAR, backend="ray").config["backend"]["type"] == "ray"
    assert LudwigModel(TABULAR, callbacks=[]).config["backend"]["type"] == "local"  # no callbacks: none refused


def test_preprocess_splits_fits_metadata_and_caches_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORK_CACHE_DIR", str(tmp_path / "cache"))
    model, frame = LudwigModel(TABULAR), sentiment_frame(100, seed=2)
    training_set, validation_set, test_set, metadata = model.preprocess(dataset=frame)  # Ludwig's default: no cache
    assert (len(training_set), len(validation_set), len(test_set)) == (70, 10, 20)
    assert set(metadata["inputs"]["genre"]["vocab"]) >= {"drama", "comedy", "horror"}
    assert not (tmp_path / "cache").exists()
    again = model.preprocess(dataset=frame, skip_save_processed_input=False)
    assert len(list((tmp_path / "cache" / "preprocessed").iterdir())) == 1
    pd.testing.assert_frame_equal(again.test_set, test_set)  # the same seed splits the same rows


def test_experiment_returns_ludwig_results_and_skips_what_it_is_told(tmp_path):
    results = LudwigModel(TABULAR).experiment(dataset=sentiment_frame(100, seed=4), output_directory=tmp_path,
                                              skip_collect_overall_stats=True, skip_save_predictions=True)
    eval_stats, train_stats, preprocessed_data, output_directory = results
    assert eval_stats is results.eval_stats and "confusion_matrix" not in eval_stats["sentiment"]
    assert eval_stats["sentiment"]["accuracy"] == pytest.approx(train_stats.test["sentiment"]["accuracy"][-1])
    assert len(preprocessed_data.test_set) == 20
    files = set(os.listdir(output_directory))
    assert "test_statistics.json" in files and "test_predictions.csv" not in files
    written = json.loads((Path(output_directory) / "test_statistics.json").read_text())
    assert "confusion_matrix" not in written["sentiment"]
