"""The config contract: Ludwig's YAML in, a frozen `Config` out, and one precise sentence for every mistake."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tunefork import config
from tunefork.config import ConfigError
from tunefork.plan import check_validation_metric

ROOT = Path(__file__).resolve().parents[1]
TEXT = {"name": "review", "type": "text", "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": "m"}}
LABEL = {"name": "sentiment", "type": "category"}


def make(**sections) -> dict:
    """A minimal valid config with `sections` replacing (or adding) top-level keys."""
    return {"input_features": [copy.deepcopy(TEXT)], "output_features": [copy.deepcopy(LABEL)], **sections}


def text_input(**changes) -> dict:
    feature = copy.deepcopy(TEXT)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(feature.get(key), dict):
            feature[key].update(value)
        else:
            feature[key] = value
    return feature


# ------------------------------------------------------------------------------------------------ bad configs

BAD = [
    # unknown keys, with the nearest known key suggested
    ("encoder key typo", make(input_features=[text_input(encoder={"trainabel": True})]),
     "input_features[0].encoder.trainabel: unknown key (did you mean 'trainable'?)"),
    ("top-level key typo", make(trainr={}), "trainr: unknown key (did you mean 'trainer'?)"),
    ("trainer key typo", make(trainer={"epoch": 3}), "trainer.epoch: unknown key (did you mean 'epochs'?)"),
    ("key of another optimizer", make(trainer={"optimizer": {"type": "sgd", "betas": [0.9, 0.99]}}),
     "trainer.optimizer.betas: unknown key"),
    ("defaults section typo", make(defaults={"text": {"preprocesing": {}}}),
     "defaults.text.preprocesing: unknown key (did you mean 'preprocessing'?)"),
    # types chosen by `type`
    ("unknown input type", make(input_features=[text_input(type="txt")]),
     "input_features[0].type: 'txt' is not supported (one of: text, category, number, binary, set) (did you mean 'text'?)"),
    ("unknown output type", make(output_features=[{"name": "s", "type": "categroy"}]),
     "output_features[0].type: 'categroy' is not supported (one of: category, binary, number, set) (did you mean 'category'?)"),
    ("feature without type", make(output_features=[{"name": "s"}]),
     "output_features[0]: missing 'type' (one of: category, binary, number, set)"),
    ("unknown defaults type", make(defaults={"txt": {"preprocessing": {}}}),
     "defaults.txt: unknown feature type (did you mean 'text'?)"),
    ("unknown encoder", make(input_features=[text_input(encoder={"type": "bertt"})]),
     "input_features[0].encoder.type: 'bertt' is not supported (one of: auto_transformer, embed, parallel_cnn, stacked_cnn, rnn, cnnrnn)"),
    ("unknown category encoder", make(input_features=[{"name": "g", "type": "category", "encoder": {"type": "sparse"}}]),
     "input_features[0].encoder.type: 'sparse' is not supported (one of: dense, onehot)"),
    ("unknown optimizer", make(trainer={"optimizer": {"type": "adamm"}}),
     "trainer.optimizer.type: 'adamm' is not supported (one of: adam, adamw, adamax, nadam, radam, sgd, rmsprop, "
     "adagrad, adadelta) (did you mean 'adam'?)"),
    ("unknown optimizer shorthand", make(trainer={"optimizer": "adamm"}),
     "trainer.optimizer: 'adamm' is not supported (one of: adam, adamw, adamax, nadam, radam, sgd, rmsprop, adagrad, "
     "adadelta)"),
    ("optimizer torch lacks", make(trainer={"optimizer": "lion"}),
     "trainer.optimizer: 'lion': a bitsandbytes optimizer, which needs a CUDA GPU and the bitsandbytes package; torch "
     "has no Lion: write type: adamw"),
    ("unknown split type", make(preprocessing={"split": {"type": "hash"}}),
     "preprocessing.split.type: 'hash' is not supported (one of: random, stratify, fixed)"),
    ("unknown backend", make(backend={"type": "horovod"}), "backend.type: 'horovod' is not supported (one of: local, ray)"),
    ("ray strategy", make(backend={"type": "ray", "trainer": {"strategy": "horovod"}}),
     "backend.trainer.strategy: 'horovod' is not supported (one of: ddp, fsdp, deepspeed)"),
    ("dask processor", make(backend={"type": "ray", "processor": {"type": "dask"}}),
     "backend.processor: Ludwig's Dask processor is not used here: tunefork preprocesses with Ray Data (type: ray)"),
    ("streaming loader", make(backend={"type": "ray", "loader": {"window_size_bytes": 500000000}}),
     "backend.loader: 'window_size_bytes' configures Ludwig's streaming loader; tunefork's workers train from fully "
     "preprocessed tables (remove backend.loader)"),
    ("ray resource case", make(backend={"type": "ray", "trainer": {"resources_per_worker": {"gpu": 1}}}),
     "backend.trainer.resources_per_worker: 'gpu': Ray's resource names are case-sensitive (did you mean 'GPU'?)"),
    ("reduce_output typo", make(input_features=[text_input(encoder={"reduce_output": "meen"})]),
     "input_features[0].encoder.reduce_output: 'meen' is not one of 'auto', 'cls_pooled', 'mean', 'sum', 'max', 'last' "
     "(did you mean 'mean'?)"),
    ("missing value strategy", make(output_features=[{**LABEL, "preprocessing": {"missing_value_strategy": "fill_with_median"}}]),
     "output_features[0].preprocessing.missing_value_strategy: 'fill_with_median' is not one of 'fill_with_const', "
     "'fill_with_mode', 'fill_with_mean', 'fill_with_false', 'bfill', 'ffill', 'drop_row' (did you mean 'fill_with_mean'?)"),
    # wrong types
    ("epochs as words", make(trainer={"epochs": "ten"}),
     "trainer.epochs: Input should be a valid integer, unable to parse string as an integer (got 'ten')"),
    ("trainable not a boolean", make(input_features=[text_input(encoder={"trainable": "maybe"})]),
     "input_features[0].encoder.trainable: Input should be a valid boolean, unable to interpret input (got 'maybe')"),
    ("batch_size neither int nor auto", make(trainer={"batch_size": "big"}),
     "trainer.batch_size: should be a valid integer or 'auto' (got 'big')"),
    ("class_weights a string", make(output_features=[{**LABEL, "loss": {"class_weights": "heavy"}}]),
     "output_features[0].loss.class_weights: should be a valid list or a valid dictionary (got 'heavy')"),
    ("input_features a mapping", {"input_features": {"name": "x"}, "output_features": [LABEL]},
     "input_features: Input should be a valid list (got {'name': 'x'})"),
    ("config a list", [TEXT, LABEL], "config: expected a mapping with input_features and output_features, got list"),
    # out of range
    ("epochs zero", make(trainer={"epochs": 0}), "trainer.epochs: Input should be greater than 0 (got 0)"),
    ("negative learning rate", make(trainer={"learning_rate": -1}),
     "trainer.learning_rate: Input should be greater than 0, or 'auto' (got -1)"),
    ("batch_size zero", make(trainer={"batch_size": 0}), "trainer.batch_size: should be greater than 0 or 'auto' (got 0)"),
    ("accumulation zero", make(trainer={"gradient_accumulation_steps": 0}),
     "trainer.gradient_accumulation_steps: should be greater than 0 or 'auto' (got 0)"),
    ("dropout one", make(combiner={"dropout": 1.0}), "combiner.dropout: Input should be less than 1 (got 1.0)"),
    ("threshold above one", make(output_features=[{"name": "b", "type": "binary", "threshold": 1.5}]),
     "output_features[0].threshold: Input should be less than 1 (got 1.5)"),
    ("max_sequence_length zero", make(input_features=[text_input(preprocessing={"max_sequence_length": 0})]),
     "input_features[0].preprocessing.max_sequence_length: Input should be greater than 0 (got 0)"),
    ("sample_ratio above one", make(preprocessing={"sample_ratio": 1.5}),
     "preprocessing.sample_ratio: Input should be less than or equal to 1 (got 1.5)"),
    ("early_stop below -1", make(trainer={"early_stop": -2}),
     "trainer.early_stop: Input should be greater than or equal to -1 (got -2)"),
    ("clip reversed", make(output_features=[{"name": "n", "type": "number", "clip": [5, 1]}]),
     "output_features[0]: clip must be [min, max] with min < max, got [5.0, 1.0]"),
    # missing required keys
    ("no input_features", {"output_features": [LABEL]}, "input_features: required key is missing"),
    ("empty input_features", make(input_features=[]), "input_features: List should have at least 1 item"),
    ("feature without name", make(output_features=[{"type": "category"}]), "output_features[0].name: required key is missing"),
    ("transformer without a model", make(input_features=[{**TEXT, "encoder": {"type": "auto_transformer"}}]),
     "input_features[0].encoder.pretrained_model_name_or_path: required key is missing"),
    ("stratify without a column", make(preprocessing={"split": {"type": "stratify"}}),
     "preprocessing.split.column: required key is missing"),
    # split probabilities
    ("probabilities sum above one", make(preprocessing={"split": {"probabilities": [0.5, 0.5, 0.5]}}),
     "preprocessing.split: probabilities must be three non-negative numbers summing to 1, got [0.5, 0.5, 0.5]"),
    ("negative probability", make(preprocessing={"split": {"type": "random", "probabilities": [1.2, -0.1, -0.1]}}),
     "preprocessing.split: probabilities must be three non-negative numbers summing to 1, got [1.2, -0.1, -0.1]"),
    ("two probabilities", make(preprocessing={"split": {"probabilities": [0.5, 0.5]}}),
     "preprocessing.split.probabilities: too few items (nothing at [2])"),
    ("four probabilities", make(preprocessing={"split": {"probabilities": [0.4, 0.2, 0.2, 0.2]}}),
     "preprocessing.split.probabilities: Tuple should have at most 3 items"),
    # relations between sections
    ("duplicate feature names", make(output_features=[LABEL, {"name": "review", "type": "number"}]),
     "feature names must be unique; repeated: review"),
    ("unknown validation_field", make(trainer={"validation_field": "sentimnt"}),
     "trainer.validation_field 'sentimnt' is neither 'combined' nor an output feature (sentiment)"),
]


@pytest.mark.parametrize(("raw", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_config_is_one_precise_sentence(raw, message):
    with pytest.raises(ConfigError) as caught:
        config.load(raw)
    assert message in caught.value.errors[0]
    assert str(caught.value).startswith(caught.value.errors[0])
    assert "Traceback" not in str(caught.value)


def test_every_problem_is_reported_and_counted():
    with pytest.raises(ConfigError) as caught:
        config.load(make(trainer={"epochs": 0, "learning_rate": -1}, combiner={"dropout": 2}))
    assert caught.value.errors == [  # in the schema's order
        "combiner.dropout: Input should be less than 1 (got 2)",
        "trainer.epochs: Input should be greater than 0 (got 0)",
        "trainer.learning_rate: Input should be greater than 0, or 'auto' (got -1)",
    ]
    assert str(caught.value) == "combiner.dropout: Input should be less than 1 (got 2) (and 2 more problems)"


VALIDATION_METRICS = [
    ("combined", "loss", None),
    ("combined", "accuracy",
     "trainer.validation_metric: 'accuracy' is not reported for 'combined' (one of: loss)"),
    ("sentiment", "accuracy", None),
    ("sentiment", "roc_auc", None),
    ("sentiment", "acuracy",
     "trainer.validation_metric: 'acuracy' is not reported for 'sentiment' "
     "(one of: loss, accuracy, macro_f1, hits_at_k, roc_auc) (did you mean 'accuracy'?)"),
    ("sentiment", "r2", "trainer.validation_metric: 'r2' is not reported for 'sentiment'"),
    ("score", "mean_absolute_error", None),
    ("score", "accuracy", "trainer.validation_metric: 'accuracy' is not reported for 'score' (one of: loss, "
     "mean_absolute_error, mean_squared_error, root_mean_squared_error, r2)"),
]


@pytest.mark.parametrize(("field", "metric", "message"), VALIDATION_METRICS)
def test_validation_metric_must_be_reported_for_the_field(field, metric, message):
    loaded = config.load(make(output_features=[LABEL, {"name": "score", "type": "number"}],
                              trainer={"validation_field": field, "validation_metric": metric}))
    if message is None:
        check_validation_metric(loaded)
        return
    with pytest.raises(ConfigError) as caught:
        check_validation_metric(loaded)
    assert message in str(caught.value)


# ------------------------------------------------------------------------------------------------ YAML files


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input_features:\n  - name: a\n    type: text\n   encoder: x\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value) == f"{path}: line 4, column 4: expected <block end>, but found '<block mapping start>'"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "config file not found"),
        (b"", "expected a mapping with input_features and output_features, got NoneType"),
        (b"- a\n- b\n", "expected a mapping with input_features and output_features, got list"),
        (b"\xff\xfe input_features: []", "not a UTF-8 text file"),
    ],
    ids=["missing", "empty", "a list", "not utf-8"],
)
def test_unreadable_config_file_is_named(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value) == f"{path}: {message}"


def test_yaml_file_and_dict_give_the_same_config(tmp_path):
    raw = make(trainer={"epochs": 3, "optimizer": "adamw"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert config.load(path) == config.load(raw) == config.load(str(path))


# ------------------------------------------------------------------------------------------------ good configs


def test_defaults_are_filled_in():
    loaded = config.load(make())
    text, label = loaded.input_features[0], loaded.output_features[0]
    assert (text.encoder.trainable, text.encoder.reduce_output, text.preprocessing.max_sequence_length) == (False, "auto", 256)
    assert (label.preprocessing.missing_value_strategy, label.top_k, label.loss.type) == ("drop_row", 3, "softmax_cross_entropy")
    assert (loaded.trainer.epochs, loaded.trainer.batch_size, loaded.trainer.optimizer.type) == (100, "auto", "adam")
    assert loaded.preprocessing.split.type == "random"
    assert loaded.preprocessing.split.probabilities == (0.7, 0.1, 0.2)
    assert loaded.backend.type == "local"


@pytest.mark.parametrize("kind", ["category", "number", "binary"])
def test_output_keeps_drop_row_when_other_preprocessing_is_given(kind):
    """A label-less row cannot be trained on: setting one preprocessing key must not switch that off."""
    other = {"category": {"lowercase": True}, "number": {"normalization": "minmax"}, "binary": {"fallback_true_label": "y"}}
    loaded = config.load(make(output_features=[{"name": "out", "type": kind, "preprocessing": other[kind]}],
                              defaults={kind: {"preprocessing": other[kind]}}))
    assert loaded.output_features[0].preprocessing.missing_value_strategy == "drop_row"


def test_ludwig_shorthand():
    loaded = config.load(make(input_features=[{"name": "review", "type": "text", "encoder": "bert"},
                                              {"name": "title", "type": "text", "encoder": {"type": "gpt2", "trainable": True}}],
                              trainer={"optimizer": "adamw"}))
    bert, gpt2 = loaded.input_features[0].encoder, loaded.input_features[1].encoder
    assert (bert.type, bert.pretrained_model_name_or_path, bert.trainable) == ("auto_transformer", "bert-base-uncased", False)
    assert (gpt2.type, gpt2.pretrained_model_name_or_path, gpt2.trainable) == ("auto_transformer", "gpt2", True)
    assert loaded.trainer.optimizer.type == "adamw"
    assert loaded.trainer.optimizer.betas == (0.9, 0.999)


def test_named_encoder_keeps_an_explicit_checkpoint():
    loaded = config.load(make(input_features=[text_input(encoder={"type": "bert", "pretrained_model_name_or_path": "/m"})]))
    assert loaded.input_features[0].encoder.pretrained_model_name_or_path == "/m"


def test_defaults_merge_into_features_and_feature_values_win():
    raw = make(
        input_features=[text_input(preprocessing={"max_sequence_length": 32}), {"name": "title", **{
            k: v for k, v in TEXT.items() if k != "name"}}, {"name": "genre", "type": "category"}],
        output_features=[{"name": "sentiment", "type": "category", "loss": {"label_smoothing": 0.2}}],
        defaults={
            "text": {"preprocessing": {"max_sequence_length": 64, "lowercase": True}, "encoder": {"trainable": True}},
            # an input takes preprocessing and encoder, an output preprocessing, decoder and loss
            "category": {"preprocessing": {"most_common": 7}, "encoder": {"embedding_size": 8},
                         "decoder": {"num_fc_layers": 1}, "loss": {"label_smoothing": 0.1}},
        },
    )
    loaded = config.load(raw)
    review, title, genre = loaded.input_features
    assert (review.preprocessing.max_sequence_length, review.preprocessing.lowercase) == (32, True)
    assert (title.preprocessing.max_sequence_length, title.preprocessing.lowercase) == (64, True)
    assert review.encoder.trainable and title.encoder.trainable
    assert (genre.preprocessing.most_common, genre.encoder.embedding_size) == (7, 8)
    output = loaded.output_features[0]
    assert (output.preprocessing.most_common, output.decoder.num_fc_layers, output.loss.label_smoothing) == (7, 1, 0.2)


def test_older_top_level_preprocessing_layout():
    raw = make(preprocessing={"text": {"max_sequence_length": 48}, "category": {"most_common": 3},
                              "split": {"type": "random", "probabilities": [0.8, 0.1, 0.1]}})
    loaded = config.load(raw)
    assert loaded.input_features[0].preprocessing.max_sequence_length == 48
    assert loaded.output_features[0].preprocessing.most_common == 3
    assert loaded.preprocessing.split.probabilities == (0.8, 0.1, 0.1)


@pytest.mark.parametrize(
    ("preprocessing", "expected"), [(None, 40), ({"max_sequence_length": 16}, 16)], ids=["moved", "preprocessing wins"]
)
def test_encoder_max_sequence_length_moves_to_preprocessing(preprocessing, expected):
    feature = text_input(encoder={"max_sequence_length": 40})
    if preprocessing:
        feature["preprocessing"] = preprocessing
    loaded = config.load(make(input_features=[feature]))
    assert loaded.input_features[0].preprocessing.max_sequence_length == expected
    assert "max_sequence_length" not in loaded.input_features[0].encoder.model_dump()


def test_ludwig_bookkeeping_keys_are_ignored():
    raw = make(ludwig_version="0.10.4", input_features=[text_input(encoder={"vocab_size": 30522, "saved_weights_in_checkpoint": True})])
    assert config.load(raw) == config.load(make())


def test_config_is_frozen():
    loaded = config.load(make())
    with pytest.raises(ValidationError):
        loaded.trainer.epochs = 3
    with pytest.raises(ValidationError):
        loaded.input_features[0].encoder.trainable = True
    assert loaded.trainer.epochs == 100


def test_callers_dict_is_not_mutated():
    raw = make(input_features=[{"name": "review", "type": "text", "encoder": {"type": "bert", "max_sequence_length": 9}}],
               defaults={"text": {"preprocessing": {"lowercase": True}}}, ludwig_version="0.10",
               preprocessing={"category": {"most_common": 3}}, trainer={"optimizer": "adamw"})
    before = copy.deepcopy(raw)
    config.load(raw)
    assert raw == before


def test_render_reloads_to_an_equal_config():
    loaded = config.load(make(
        input_features=[text_input(preprocessing={"max_sequence_length": 12}), {"name": "genre", "type": "category"},
                        {"name": "length", "type": "number", "encoder": {"type": "dense", "output_size": 8}}],
        output_features=[LABEL, {"name": "score", "type": "number", "clip": [0, 5]},
                         {"name": "recommended", "type": "binary"}],
        preprocessing={"split": {"type": "stratify", "column": "sentiment", "probabilities": [0.6, 0.2, 0.2]}},
        trainer={"optimizer": {"type": "sgd", "momentum": 0.9}, "batch_size": 16},
    ))
    rendered = config.render(loaded)
    again = config.load(yaml.safe_load(rendered))
    assert again == loaded
    assert config.render(again) == rendered
    assert "pretrained_model_name_or_path: m" in rendered and "momentum: 0.9" in rendered


EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml")) + sorted((ROOT / "examples").rglob("*.yml"))


def test_there_are_example_configs():
    assert EXAMPLES, "examples/ holds no YAML config"


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_every_example_config_validates(path):
    loaded = config.load(path)
    assert loaded.input_features and loaded.output_features
    check_validation_metric(loaded)


def test_loading_a_config_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys; from tunefork import config; config.load({'input_features': [{'name': 'a', 'type': 'text', "
            "'encoder': 'bert'}], 'output_features': [{'name': 'b', 'type': 'category'}]}); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'ray', 'fastapi', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ludwig_names_from_before_0_5_are_read(caplog):
    """`training:` and the `numerical` type, which Ludwig itself still upgrades on load."""
    import logging

    from tunefork import config as config_mod

    with caplog.at_level(logging.INFO, logger="tunefork.config"):
        cfg = config_mod.load({"input_features": [{"name": "age", "type": "numerical"}],
                               "output_features": [{"name": "y", "type": "binary"}], "training": {"epochs": 7}})
    assert cfg.input_features[0].type == "number" and cfg.trainer.epochs == 7
    assert "numerical is number" in caplog.text and "training: is trainer:" in caplog.text
