"""tunefork's metrics equal the reference libraries' own calls, case by case (README, Metrics).

Each case runs the library the way its documentation shows (torchmetrics' Metric classes, `rouge_score.RougeScorer`,
`sacrebleu.corpus_bleu`) on the raw inputs, and tunefork's function the way the feature modules call it (macro-F1
from the confusion matrix, accuracy on labels of any kind). Where tunefork says NaN for an undefined value and the
library says 0 with a warning, the case says so.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torchmetrics.classification as tmc
import torchmetrics.regression as tmr

from tunefork.features import generation_metrics as gm
from tunefork.features import metrics

CLASSES = [  # (true, predicted, number of classes)
    ([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3),
    ([0, 1, 2, 3], [0, 1, 2, 3], 4),  # perfect
    ([0, 1, 2, 0], [1, 2, 0, 2], 3),  # no row right
    ([0, 0, 0], [0, 0, 0], 2),  # one class present, predicted right
    ([0, 0, 0, 0], [0, 1, 0, 1], 2),  # one class present; the other is predicted and counts as F1 0
    ([2, 2, 0, 0, 0], [2, 0, 0, 0, 1], 4),  # class 3 neither true nor predicted: left out of the mean
    ([1], [0], 2),
]


@pytest.mark.parametrize(("y", "pred", "n"), CLASSES)
def test_classification_metrics_equal_torchmetrics(y, pred, n):
    y, pred = np.array(y), np.array(pred)
    t, p = torch.tensor(y), torch.tensor(pred)
    matrix = metrics.confusion_matrix(y, pred, n)
    assert matrix.tolist() == tmc.MulticlassConfusionMatrix(num_classes=n)(p, t).tolist()
    assert metrics.accuracy(y, pred) == pytest.approx(tmc.MulticlassAccuracy(num_classes=n, average="micro")(p, t).item())
    assert metrics.macro_f1(matrix) == pytest.approx(tmc.MulticlassF1Score(num_classes=n, average="macro")(p, t).item())


def test_macro_f1_counts_a_class_predicted_but_never_true():
    # torchmetrics' (and scikit-learn's) macro average: class 1 is never true, but predicted twice, so its F1 of 0
    # counts; the hand-written version averaged over true classes only and said 2/3 here
    matrix = metrics.confusion_matrix(np.array([0, 0, 0, 0]), np.array([0, 1, 0, 1]), 2)
    assert metrics.macro_f1(matrix) == pytest.approx((2 / 3 + 0) / 2)


def test_accuracy_of_booleans_and_of_labels_outside_the_set():
    y, pred = np.array([True, False, True]), np.array([True, True, True])
    assert metrics.accuracy(y, pred) == pytest.approx(tmc.BinaryAccuracy()(torch.tensor(pred), torch.tensor(y)).item())
    assert metrics.accuracy(np.array([0, -1, 1]), np.array([0, 0, 1])) == pytest.approx(2 / 3)  # -1: unseen, a miss
    assert math.isnan(metrics.accuracy(np.array([]), np.array([])))


ROC = [  # (positive?, score)
    ([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2]),
    ([1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8]),
    ([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]),  # a tie across the classes
    ([1, 1, 0, 0, 0], [0.5] * 5),  # all tied: 0.5
    ([1, 0, 0, 1, 0], [0.7, 0.7, 0.2, 0.4, 0.4]),
    ([0, 1, 1, 0, 1, 0, 0], [0.05, 0.93, 0.41, 0.41, 0.6, 0.02, 0.77]),
]


@pytest.mark.parametrize(("y", "score"), ROC)
def test_roc_auc_equals_torchmetrics(y, score):
    reference = tmc.BinaryAUROC(thresholds=None)(torch.tensor(score, dtype=torch.float64), torch.tensor(y)).item()
    assert metrics.roc_auc(np.array(y), np.array(score)) == pytest.approx(reference, abs=1e-7)


def test_roc_auc_of_one_class_is_nan_where_torchmetrics_says_0():
    with pytest.warns(UserWarning):  # torchmetrics: "No negative samples in targets ... returns 0"
        assert tmc.BinaryAUROC()(torch.tensor([0.2, 0.3]), torch.tensor([1, 1])).item() == 0
    assert math.isnan(metrics.roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


HITS = [  # (true, probabilities, k)
    ([2, 0, 1], [[0.1, 0.5, 0.4, 0.0], [0.3, 0.6, 0.05, 0.05], [0.7, 0.1, 0.15, 0.05]], 2),
    ([3, 3], [[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]], 3),
    ([0, 1], [[0.9, 0.05, 0.05], [0.8, 0.15, 0.05]], 2),
]


@pytest.mark.parametrize(("y", "probabilities", "k"), HITS)
def test_hits_at_k_equals_torchmetrics(y, probabilities, k):
    n = len(probabilities[0])
    reference = tmc.MulticlassAccuracy(num_classes=n, top_k=k, average="micro")(torch.tensor(probabilities), torch.tensor(y))
    assert metrics.hits_at_k(np.array(y), np.array(probabilities), k) == pytest.approx(reference.item())


def test_hits_at_k_counts_an_unseen_label_as_a_miss():
    assert metrics.hits_at_k(np.array([0, -1]), np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]]), 2) == 0.5


REGRESSION = [  # (true, predicted)
    ([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 6.0]),
    ([1.5, -2.0, 3.25], [1.5, -2.0, 3.25]),  # perfect
    ([1e6, 2e6, 3e6], [1.1e6, 1.9e6, 3.3e6]),
    ([-1.0, 0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0, -1.0]),  # R² below 0
]


@pytest.mark.parametrize(("y", "pred"), REGRESSION)
def test_regression_metrics_equal_torchmetrics(y, pred):
    t, p = torch.tensor(y, dtype=torch.float64), torch.tensor(pred, dtype=torch.float64)
    result = metrics.regression(np.array(y), np.array(pred))
    assert result["mean_absolute_error"] == pytest.approx(tmr.MeanAbsoluteError()(p, t).item())
    assert result["mean_squared_error"] == pytest.approx(tmr.MeanSquaredError()(p, t).item())
    assert result["root_mean_squared_error"] == pytest.approx(tmr.MeanSquaredError(squared=False)(p, t).item())
    assert result["r2"] == pytest.approx(tmr.R2Score()(p, t).item())


def test_r2_is_scale_free_where_torchmetrics_tolerance_is_absolute():
    # torchmetrics treats sums of squares under 1e-4 as 0: on this small-valued target it says R² = 1 (the residual
    # sum 5e-5 reads as a perfect fit); 1 − rss/tss = 1 − 5e-5/2e-4 = 0.75, as on the same data scaled by 100
    y, pred = np.array([0.0, 0.01, 0.02]), np.array([0.005, 0.01, 0.015])
    assert tmr.R2Score()(torch.tensor(pred), torch.tensor(y)).item() == 1.0
    assert metrics.regression(y, pred)["r2"] == pytest.approx(0.75)
    assert metrics.regression(y * 100, pred * 100)["r2"] == pytest.approx(tmr.R2Score()(torch.tensor(pred * 100),
                                                                                         torch.tensor(y * 100)).item())


def test_r2_of_a_constant_target_is_nan_where_torchmetrics_says_0():
    t, p = torch.tensor([2.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert tmr.R2Score()(p, t).item() == 0
    assert math.isnan(metrics.regression(np.array([2.0, 2.0]), np.array([1.0, 3.0]))["r2"])
    assert math.isnan(metrics.regression(np.array([2.0]), np.array([1.0]))["r2"])  # one row: undefined as well


TEXTS = [  # (predictions, references)
    (["the cat sat on the mat"], ["the cat sat on a mat"]),
    (["the cat on the mat", "a dog"], ["the cat sat on the mat", "a dog barked"]),
    (["identical text.", "Paris."], ["identical text.", "Paris."]),  # perfect
    (["x y z"], ["a b c"]),  # no overlap
    ([""], [""]),  # empty strings
    (["", "some words"], ["a reference", ""]),
    (["The Cat, sat!"], ["the cat sat"]),  # case and punctuation: ROUGE ignores both, BLEU reads both
    (["le café est fermé"], ["le café est ouvert"]),  # letters beyond ASCII (rouge-score drops them)
]


@pytest.mark.parametrize(("predictions", "references"), TEXTS)
def test_rouge_l_and_bleu_equal_rouge_score_and_sacrebleu(predictions, references):
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)])
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score / 100
    scores = gm.text_scores(predictions, references)
    assert scores["rouge_l"] == pytest.approx(rouge) and scores["bleu"] == pytest.approx(bleu)
    assert scores["exact_match"] == np.mean([p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)])


def test_rouge_l_warns_about_letters_its_tokenizer_drops(caplog):
    with caplog.at_level(logging.WARNING, logger="tunefork.evaluate"):
        gm.text_scores(["le café", "plain"], ["le cafe", "plain"])
    assert "1 of 2 rows have letters outside ASCII" in caplog.text
    assert all(math.isnan(v) for v in gm.text_scores([], []).values())
