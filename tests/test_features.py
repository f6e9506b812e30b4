"""Feature types fitted and transformed on small tables whose right answers can be written down by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tunefork import config, hf
from tunefork.config.features import (
    BinaryInput,
    BinaryOutput,
    CategoryInput,
    CategoryOutput,
    NumberInput,
    NumberOutput,
)
from tunefork.config.schema import FixedSplit, RandomSplit, StratifySplit
from tunefork.data import split
from tunefork.data.tensors import TokenIds
from tunefork.encoders.pooling import pool
from tunefork.errors import DataError
from tunefork.features import binary, category, metrics, number, pipeline, text

# ------------------------------------------------------------------------------------------------- category


def test_category_vocabulary_is_in_frequency_order_with_unk_first():
    feature = CategoryInput(name="g", type="category")
    meta = category.fit(pd.Series(["b", "a", "c", "b", "a", "b", "d"]), feature)
    assert meta["vocab"] == ["<UNK>", "b", "a", "c", "d"]  # ties (c, d) broken by value, not row order
    assert category.transform(pd.Series(["b", "a", "d", "c"]), feature, meta).tolist() == [1, 2, 4, 3]


def test_category_vocabulary_does_not_depend_on_row_order():
    feature = CategoryInput(name="g", type="category")
    values = ["x", "y", "z", "y", "w", "x"]
    assert category.fit(pd.Series(values), feature) == category.fit(pd.Series(values[::-1]), feature)


def test_category_most_common_sends_rare_values_to_unk():
    feature = CategoryInput(name="g", type="category", preprocessing={"most_common": 2})
    meta = category.fit(pd.Series(["b", "a", "b", "c", "a", "b", "d"]), feature)
    assert meta["vocab"] == ["<UNK>", "b", "a"]
    assert category.transform(pd.Series(["a", "c", "d", "b"]), feature, meta).tolist() == [2, 0, 0, 1]


def test_category_input_unseen_value_is_unk_index_zero():
    feature = CategoryInput(name="g", type="category")
    meta = category.fit(pd.Series(["drama", "comedy", "drama"]), feature)
    assert category.transform(pd.Series(["western", "comedy", " drama "]), feature, meta).tolist() == [0, 2, 1]


def test_category_lowercase():
    feature = CategoryInput(name="g", type="category", preprocessing={"lowercase": True})
    meta = category.fit(pd.Series(["Drama", "DRAMA", "comedy"]), feature)
    assert meta["vocab"] == ["<UNK>", "drama", "comedy"]


def test_category_output_counts_and_unseen_label_is_minus_one():
    feature = CategoryOutput(name="y", type="category")
    meta = category.fit(pd.Series(["pos", "neg", "pos", "mid", "pos", "neg"]), feature, output=True)
    assert meta == {"vocab": ["pos", "neg", "mid"], "counts": [3, 2, 1], "canonical_numbers": True}
    assert category.transform(pd.Series(["neg", "unseen", "mid"]), feature, meta, output=True).tolist() == [1, -1, 2]


def test_category_output_needs_two_classes():
    with pytest.raises(DataError, match="category output 'y' has 1 class in the training data"):
        category.fit(pd.Series(["pos", "pos"]), CategoryOutput(name="y", type="category"), output=True)


def test_unseen_label_is_left_out_of_the_metrics_and_the_loss():
    feature = CategoryOutput(name="y", type="category")
    meta = {"vocab": ["a", "b"], "class_weights": None}
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    loss = category.loss(feature, meta, logits, torch.tensor([0, -1]))
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0])).item())
    out = category.predict(feature, meta, logits)
    scores = category.metrics(feature, meta, np.array([0, -1]), out)  # issue 18: counted, not scored wrong
    assert scores["accuracy"] == 1.0 and scores["unseen_labels"] == 1 and scores["confusion_matrix"] == [[1, 0], [0, 0]]


CLASS_WEIGHTS = [
    ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], None),
    ({"mid": 4.0}, [1.0, 1.0, 4.0], None),  # a class not named keeps weight 1
    ({"pos": 0.5, "neg": 2}, [0.5, 2.0, 1.0], None),
    ([1.0, 2.0], None, "output 'y' loss.class_weights has 2 values for 3 classes"),
    ({"maybe": 2.0}, None, "output 'y' loss.class_weights names unknown classes ['maybe']"),
]


@pytest.mark.parametrize(("weights", "expected", "error"), CLASS_WEIGHTS)
def test_class_weights(weights, expected, error):
    feature = CategoryOutput(name="y", type="category", loss={"class_weights": weights})
    meta = {"vocab": ["pos", "neg", "mid"]}
    if error:
        with pytest.raises(DataError, match=error.replace("[", r"\[").replace("]", r"\]")):
            category.class_weights(feature, meta)
    else:
        assert category.class_weights(feature, meta) == expected


# --------------------------------------------------------------------------------------------------- number

NUMBERS = [1.0, 2.0, 4.0, 9.0]


@pytest.mark.parametrize(
    ("normalization", "expected"),
    [
        ("zscore", (np.array(NUMBERS) - 4.0) / np.std(NUMBERS)),
        ("minmax", (np.array(NUMBERS) - 1.0) / 8.0),
        (None, np.array(NUMBERS)),
    ],
)
def test_number_normalization_and_predict_denormalises(normalization, expected):
    feature = NumberOutput(name="x", type="number", preprocessing={"normalization": normalization})
    meta = number.fit(pd.Series(NUMBERS), feature, output=True)
    assert (meta["mean"], meta["min"], meta["max"]) == (4.0, 1.0, 9.0)
    assert meta["std"] == pytest.approx(np.std(NUMBERS))
    scaled = number.transform(pd.Series(NUMBERS), feature, meta)
    np.testing.assert_allclose(scaled, expected, rtol=1e-6)
    back = number.predict(feature, meta, torch.from_numpy(scaled).unsqueeze(-1))["predictions"]
    np.testing.assert_allclose(back, NUMBERS, rtol=1e-6)
    assert number.metrics(feature, meta, scaled, {"predictions": back})["mean_absolute_error"] == pytest.approx(0, abs=1e-5)


def test_constant_number_column_does_not_divide_by_zero():
    feature = NumberInput(name="x", type="number")
    meta = number.fit(pd.Series([3.0, 3.0]), feature)
    assert number.transform(pd.Series([3.0, 5.0]), feature, meta).tolist() == [0.0, 2.0]


def test_number_clip():
    feature = NumberOutput(name="x", type="number", clip=[0, 5], preprocessing={"normalization": None})
    meta = number.fit(pd.Series([1.0, 2.0]), feature, output=True)
    assert number.predict(feature, meta, torch.tensor([[-3.0], [2.5], [9.0]]))["predictions"].tolist() == [0, 2.5, 5]


def test_numbers_written_as_text_are_read():
    feature = NumberInput(name="x", type="number", preprocessing={"normalization": None})
    meta = number.fit(pd.Series(["1", "2.5", "-3e1"]), feature)
    assert number.transform(pd.Series(["1", "2.5", "-3e1"]), feature, meta).tolist() == [1.0, 2.5, -30.0]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["1", "abc", "3"], "number column 'price': 'abc' is not a number (row 1)"),
        ([1.0, float("inf")], "number column 'price': contains NaN or infinity (row 1)"),
        ([1.0, float("nan"), 2.0], "number column 'price': contains NaN or infinity (row 1)"),
    ],
    ids=["text", "inf", "nan"],
)
def test_bad_numbers_name_the_column(values, message):
    feature = NumberInput(name="x", type="number", column="price")
    with pytest.raises(DataError) as caught:
        number.fit(pd.Series(values, dtype=object if isinstance(values[0], str) else float), feature)
    assert str(caught.value) == message


# --------------------------------------------------------------------------------------------------- binary

BINARY = [
    (["yes", "no", "yes"], {}, [1, 0, 1], ["no", "yes"]),
    (["True", "false", "True"], {}, [1, 0, 1], ["false", "True"]),
    ([1, 0, 0], {}, [1, 0, 0], ["0", "1"]),
    ([True, False, True], {}, [1, 0, 1], ["False", "True"]),
    (["dog", "cat", "dog"], {}, [1, 0, 1], ["cat", "dog"]),  # two arbitrary strings: the later one is true
    (["dog", "cat", "dog"], {"fallback_true_label": "cat"}, [0, 1, 0], ["dog", "cat"]),
    (["Positive", "Negative"], {}, [1, 0], ["Negative", "Positive"]),
]


@pytest.mark.parametrize(("values", "preprocessing", "expected", "labels"), BINARY)
def test_binary_values(values, preprocessing, expected, labels):
    feature = BinaryInput(name="b", type="binary", preprocessing=preprocessing)
    meta = binary.fit(pd.Series(values), feature)
    assert meta["labels"] == labels
    assert binary.transform(pd.Series(values), feature, meta).tolist() == expected


def test_binary_standard_spellings_are_understood_at_predict_time():
    feature = BinaryInput(name="b", type="binary")
    meta = binary.fit(pd.Series(["yes", "no"]), feature)
    assert binary.transform(pd.Series(["TRUE", "false", "y"]), feature, meta).tolist() == [1, 0, 1]
    with pytest.raises(DataError, match=r"binary column 'b': 'maybe' is neither of \['no', 'yes'\]"):
        binary.transform(pd.Series(["yes", "maybe"]), feature, meta)


@pytest.mark.parametrize(
    ("values", "preprocessing", "message"),
    [
        (["a", "b", "c"], {}, "binary column 'b' has 3 distinct values ['a', 'b', 'c']; expected 2"),
        (["dog", "cat"], {"fallback_true_label": "cow"}, "binary column 'b': fallback_true_label 'cow' is not one of ['cat', 'dog']"),
    ],
)
def test_binary_errors(values, preprocessing, message):
    with pytest.raises(DataError) as caught:
        binary.fit(pd.Series(values), BinaryInput(name="b", type="binary", preprocessing=preprocessing))
    assert str(caught.value) == message


def test_binary_output_needs_both_values():
    with pytest.raises(DataError, match="binary output 'b' has one value in the training data"):
        binary.fit(pd.Series(["yes", "yes"]), BinaryOutput(name="b", type="binary"), output=True)


def test_binary_columns_name_the_labels():
    feature = BinaryOutput(name="rec", type="binary")
    meta = binary.fit(pd.Series(["yes", "no"]), feature, output=True)
    out = binary.predict(feature, meta, torch.tensor([[2.0], [-1.0]]))
    columns = binary.columns(feature, meta, out)
    assert list(columns) == ["rec_predictions", "rec_probabilities_no", "rec_probabilities_yes", "rec_probability"]
    assert columns["rec_predictions"].tolist() == ["yes", "no"]
    np.testing.assert_allclose(columns["rec_probabilities_yes"], torch.sigmoid(torch.tensor([2.0, -1.0])).numpy())
    np.testing.assert_allclose(columns["rec_probability"], [1 / (1 + math.exp(-2)), 1 - 1 / (1 + math.exp(1))], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def bert_feature_and_tokenizer(tiny_bert):
    def build(max_length: int):
        cfg = config.load({"input_features": [{"name": "review", "type": "text", "encoder": {
            "type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)},
            "preprocessing": {"max_sequence_length": max_length}}], "output_features": [{"name": "y", "type": "category"}]})
        feature = cfg.input_features[0]
        return feature, text.load_tokenizer(feature)

    return build


@pytest.mark.parametrize("max_length", [4, 6, 64])
def test_text_is_truncated_at_max_sequence_length(bert_feature_and_tokenizer, max_length):
    feature, tokenizer = bert_feature_and_tokenizer(max_length)
    sentences = ["great", "the movie was really quite very dull and boring with a messy plot"]
    meta = text.fit(pd.Series(sentences), feature, tokenizer)
    assert meta["max_sequence_length"] == max_length and meta["pad_token_id"] == tokenizer.pad_token_id
    ids = text.transform(pd.Series(sentences), feature, meta, tokenizer)
    full = [tokenizer(s)["input_ids"] for s in sentences]
    assert ids.lengths.tolist() == [min(len(f), max_length) for f in full]
    assert ids.row(0).tolist() == full[0]  # short rows are untouched, special tokens included
    assert ids.row(1)[0] == tokenizer.cls_token_id and ids.row(1)[-1] == tokenizer.sep_token_id


def test_real_wordpiece_tokenizer_truncates_and_keeps_special_tokens(minilm_dir):
    cfg = config.load({"input_features": [{"name": "s", "type": "text", "encoder": {"type": "auto_transformer",
                       "pretrained_model_name_or_path": str(minilm_dir)}, "preprocessing": {"max_sequence_length": 8}}],
                       "output_features": [{"name": "y", "type": "category"}]})
    feature = cfg.input_features[0]
    tokenizer = text.load_tokenizer(feature)
    meta = text.fit(pd.Series(["x"]), feature, tokenizer)
    ids = text.transform(pd.Series(["a gorgeous , witty , seductive movie that never lets up", "fine"]), feature, meta, tokenizer)
    assert ids.lengths.tolist() == [8, 3]
    assert ids.row(1).tolist() == [tokenizer.cls_token_id, tokenizer.convert_tokens_to_ids("fine"), tokenizer.sep_token_id]
    assert ids.row(0)[-1] == tokenizer.sep_token_id  # truncation keeps the closing [SEP]
    assert not hf.is_decoder_only(hf.load_config(minilm_dir, where="encoder"))


def test_token_ids_pad_to_the_batch_longest_row():
    ids = TokenIds.from_rows([[1, 2, 3, 4, 5], [6], [7, 8]])
    assert ids.lengths.tolist() == [5, 1, 2]
    padded, mask = ids.padded(np.array([1, 2]), pad_id=0)
    assert padded.tolist() == [[6, 0], [7, 8]]  # width 2, not the table's 5
    assert mask.tolist() == [[1, 0], [1, 1]]
    padded, mask = ids.padded(np.array([2, 0]), pad_id=9, left=True)
    assert padded.tolist() == [[9, 9, 9, 7, 8], [1, 2, 3, 4, 5]]
    assert mask.tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    assert ids.take(np.array([2, 1])).row(0).tolist() == [7, 8]


# ------------------------------------------------------------------------------------------ missing values


def test_missing_value_strategies():
    cfg = config.load({
        "input_features": [
            {"name": "mode", "type": "category", "preprocessing": {"missing_value_strategy": "fill_with_mode"}},
            {"name": "const", "type": "category", "preprocessing": {"fill_value": "none"}},
            {"name": "mean", "type": "number", "preprocessing": {"missing_value_strategy": "fill_with_mean", "normalization": None}},
            {"name": "num_const", "type": "number", "preprocessing": {"fill_value": -1, "normalization": None}},
            {"name": "ffill", "type": "number", "preprocessing": {"missing_value_strategy": "ffill", "normalization": None}},
            {"name": "bfill", "type": "number", "preprocessing": {"missing_value_strategy": "bfill", "normalization": None}},
            {"name": "drop", "type": "number", "preprocessing": {"missing_value_strategy": "drop_row", "normalization": None}},
            {"name": "flag", "type": "binary"},
        ],
        "output_features": [{"name": "y", "type": "category"}],
    })
    nan = np.nan
    frame = pd.DataFrame({
        "mode": ["a", None, "a", "b", "", "b", "a"],
        "const": ["x", None, "x", "y", " ", "y", "x"],
        "mean": [1.0, nan, 3.0, 5.0, 8.0, nan, 1.0],
        "num_const": [1.0, nan, 3.0, 5.0, nan, 2.0, 1.0],
        "ffill": [nan, 2.0, nan, 4.0, nan, 6.0, nan],
        "bfill": [nan, 2.0, nan, 4.0, 5.0, nan, nan],
        "drop": [1, 2, 3, nan, 5, 6, 7],
        "flag": ["yes", None, "no", "yes", "no", None, "yes"],
        "y": ["p", "q", None, "p", "q", "q", ""],  # a missing label drops the row (an output's default)
    })
    meta = pipeline.fit(cfg, frame, {})
    assert meta["fills"]["mode"] == "a"
    assert meta["fills"]["mean"] == pytest.approx(18 / 5)
    assert meta["fills"]["num_const"] == -1
    table = pipeline.transform(cfg, frame, meta, {})
    assert table.row_index.tolist() == [0, 1, 4, 5]  # row 2: no label, row 3: drop_row, row 6: empty label
    vocab = meta["inputs"]["mode"]["vocab"]
    assert [vocab[i] for i in table["mode"]] == ["a", "a", "a", "b"]
    vocab = meta["inputs"]["const"]["vocab"]
    assert [vocab[i] for i in table["const"]] == ["x", "none", "none", "y"]
    assert table["mean"].tolist() == pytest.approx([1.0, 3.6, 8.0, 3.6])
    assert table["num_const"].tolist() == [1.0, -1.0, -1.0, 2.0]
    assert table["ffill"].tolist() == [2.0, 2.0, 4.0, 6.0]  # the first row, with nothing before it, takes the next
    assert table["bfill"].tolist() == [2.0, 2.0, 5.0, 5.0]  # the last row, with nothing after it, takes the previous
    assert table["drop"].tolist() == [1.0, 2.0, 5.0, 6.0]
    assert meta["inputs"]["flag"]["labels"] == ["no", "yes"]
    assert table["flag"].tolist() == [1.0, 0.0, 0.0, 0.0]  # binary inputs default to fill_with_false
    assert [meta["outputs"]["y"]["vocab"][i] for i in table["y"]] == ["p", "q", "q", "q"]


def test_fill_with_mean_needs_a_number_feature():
    cfg = config.load({"input_features": [{"name": "g", "type": "category", "preprocessing": {
        "missing_value_strategy": "fill_with_mean"}}], "output_features": [{"name": "y", "type": "category"}]})
    with pytest.raises(DataError, match="fill_with_mean needs a number feature, not category"):
        pipeline.fit(cfg, pd.DataFrame({"g": ["a", None], "y": ["p", "q"]}), {})


def test_all_empty_label_column_is_an_error_naming_it():
    cfg = config.load({"input_features": [{"name": "g", "type": "category"}],
                       "output_features": [{"name": "y", "type": "category", "preprocessing": {"missing_value_strategy": "fill_with_const"}}]})
    frame = pd.DataFrame({"g": ["a", "b"], "y": [None, " "]})
    frame.attrs["source"] = "train.csv"
    with pytest.raises(DataError, match="train.csv: output column 'y' is empty"):
        pipeline.fit(cfg, frame, {})


# --------------------------------------------------------------------------------------------------- splits


def test_random_split_gives_exact_proportions_and_is_seeded():
    frame = pd.DataFrame({"x": range(200)})
    how = RandomSplit(probabilities=(0.6, 0.15, 0.25))
    labels = split.assign(frame, how, seed=1)
    assert np.bincount(labels).tolist() == [120, 30, 50]
    assert (split.assign(frame, how, seed=1) == labels).all()
    assert not (split.assign(frame, how, seed=2) == labels).all()
    parts = split.split(frame, how, seed=1)
    assert [len(parts[s]) for s in split.SPLITS] == [120, 30, 50]
    assert sorted(pd.concat(parts.values())["x"]) == list(range(200))  # every row exactly once
    assert all((part.index == part["x"]).all() for part in parts.values())  # row labels of the whole table


def test_random_split_remainder_goes_to_training():
    labels = split.assign(pd.DataFrame({"x": range(7)}), RandomSplit(probabilities=(0.7, 0.1, 0.2)), seed=0)
    assert np.bincount(labels, minlength=3).tolist() == [6, 0, 1]  # floor(0.7), floor(1.4) → the rest trains


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1, 2, 0, 2], [0, 1, 2, 0, 2]),
        (["train", "validation", "test", "training", "val"], [0, 1, 2, 0, 1]),
        (["TRAIN", " test ", "dev", "2", "1"], [0, 2, 1, 2, 1]),
    ],
)
def test_fixed_split(values, expected):
    frame = pd.DataFrame({"split": values, "x": range(len(values))})
    assert split.assign(frame, FixedSplit(type="fixed"), seed=0).tolist() == expected


@pytest.mark.parametrize(
    ("frame", "how", "message"),
    [
        (pd.DataFrame({"split": [0, 3, "holdout"]}), FixedSplit(type="fixed"),
         "data.csv: column 'split' has split values ['3', 'holdout']; use 0/1/2 or train/validation/test"),
        (pd.DataFrame({"x": [0]}), FixedSplit(type="fixed", column="fold"), "data.csv: split column 'fold' not found"),
        (pd.DataFrame({"x": [0]}), StratifySplit(type="stratify", column="label"), "data.csv: stratify column 'label' not found"),
    ],
    ids=["bad values", "no fixed column", "no stratify column"],
)
def test_split_errors_name_file_and_column(frame, how, message):
    frame.attrs["source"] = "data.csv"
    with pytest.raises(DataError) as caught:
        split.assign(frame, how, seed=0)
    assert str(caught.value) == message


def test_stratified_split_keeps_class_ratios():
    frame = pd.DataFrame({"label": ["a"] * 150 + ["b"] * 50})
    labels = split.assign(frame, StratifySplit(type="stratify", column="label", probabilities=(0.6, 0.2, 0.2)), seed=3)
    for name, count in (("a", 150), ("b", 50)):
        assert np.bincount(labels[frame["label"] == name], minlength=3).tolist() == [0.6 * count, 0.2 * count, 0.2 * count]


# -------------------------------------------------------------------------------------------------- metrics


def test_accuracy_and_confusion_matrix():
    y, pred = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2])
    assert metrics.accuracy(y, pred) == pytest.approx(4 / 6)
    assert metrics.confusion_matrix(y, pred, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert metrics.confusion_matrix(np.array([-1, 0]), np.array([0, 0]), 3).tolist() == [[1, 0, 0], [0] * 3, [0] * 3]


def test_macro_f1_by_hand():
    matrix = metrics.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    # class 0: p=1/2 r=1/2 → 1/2; class 1: p=1/2 r=1 → 2/3; class 2: p=1 r=2/3 → 4/5
    assert metrics.macro_f1(matrix) == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    # a class never in the labels does not drag the mean down; one never predicted counts as 0
    assert metrics.macro_f1(np.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]])) == pytest.approx((0.8 + 0) / 2)


ROC = [
    ([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2], 1.0),
    ([1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8], 0.0),
    ([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1], 0.625),  # pairs: tie ½, 1, 0, 1 → 2.5 / 4
    ([1, 1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5, 0.5], 0.5),
    ([1, 0, 0, 1, 0], [0.7, 0.7, 0.2, 0.4, 0.4], (0.5 + 1 + 1 + 0 + 0.5 + 1) / 6),
    ([1, 1], [0.2, 0.3], None),  # one class only: undefined
]


@pytest.mark.parametrize(("y", "score", "expected"), ROC)
def test_roc_auc_by_hand(y, score, expected):
    value = metrics.roc_auc(np.array(y), np.array(score))
    if expected is None:
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected)


def test_regression_metrics_by_hand():
    y, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 2.0, 6.0])
    result = metrics.regression(y, pred)
    assert result["mean_absolute_error"] == pytest.approx((1 + 0 + 1 + 2) / 4)
    assert result["mean_squared_error"] == pytest.approx((1 + 0 + 1 + 4) / 4)
    assert result["root_mean_squared_error"] == pytest.approx(math.sqrt(1.5))
    assert result["r2"] == pytest.approx(1 - 1.5 / 1.25)
    assert metrics.regression(y, y)["r2"] == 1.0
    assert math.isnan(metrics.regression(np.array([2.0, 2.0]), np.array([1.0, 3.0]))["r2"])


# -------------------------------------------------------------------------------------------------- pooling


def _hidden_and_masks():
    """Two rows (3 and 2 real tokens), hidden size 2; padding positions hold huge values that must never count."""
    real = [torch.tensor([[1.0, -1.0], [2.0, 5.0], [3.0, 0.0]]), torch.tensor([[4.0, 2.0], [-6.0, 1.0]])]
    width, pad = 4, torch.tensor([1e6, 1e6])
    right = torch.stack([torch.cat([r, pad.expand(width - len(r), 2)]) for r in real])
    left = torch.stack([torch.cat([pad.expand(width - len(r), 2), r]) for r in real])
    mask_right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    mask_left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    return (right, mask_right), (left, mask_left)


POOLED = {
    "mean": [[2.0, 4 / 3], [-1.0, 1.5]],
    "sum": [[6.0, 4.0], [-2.0, 3.0]],
    "max": [[3.0, 5.0], [4.0, 2.0]],
    "last": [[3.0, 0.0], [-6.0, 1.0]],
}


@pytest.mark.parametrize("how", list(POOLED))
@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_excludes_padding(how, side):
    right, left = _hidden_and_masks()
    hidden, mask = right if side == "right" else left
    torch.testing.assert_close(pool(hidden, mask, how), torch.tensor(POOLED[how]))


def test_cls_pooled_uses_the_pooler_output_when_there_is_one():
    (hidden, mask), _ = _hidden_and_masks()
    torch.testing.assert_close(pool(hidden, mask, "cls_pooled"), hidden[:, 0])
    pooler = torch.ones(2, 2)
    assert pool(hidden, mask, "cls_pooled", pooler) is pooler
