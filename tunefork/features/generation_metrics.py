"""Scores of generated text against a reference: exact match, ROUGE-L and corpus BLEU, as small pure functions.

Written here (about 60 lines) rather than pulled from `rouge-score` / `sacrebleu`, which would add dependencies for
three formulas; the tests pin them on hand-computed cases. Both ROUGE-L and BLEU read the same tokens: the text
lower-cased, split into runs of word characters and single punctuation marks ("Paris." → "paris", ".").
"""

from __future__ import annotations

import math
import re
from collections import Counter

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(str(text).lower())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of rows whose prediction equals the reference, surrounding whitespace ignored."""
    if not references:
        return float("nan")
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(references)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence by dynamic programming, one row of the table kept (O(len(a)·len(b)) time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of one pair (Lin 2004): LCS-based precision P = lcs/|pred|, recall R = lcs/|ref|, F = 2PR/(P+R)."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)  # two empty texts agree; one empty text shares nothing
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(predictions: list[str], references: list[str]) -> float:
    if not references:
        return float("nan")
    return sum(rouge_l(p, r) for p, r in zip(predictions, references, strict=True)) / len(references)


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(predictions: list[str], references: list[str], max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002), one reference per row, no smoothing.

    p_n = Σ clipped n-gram matches / Σ predicted n-grams, over the whole corpus (not averaged per row);
    BLEU = BP · exp(mean over n ≤ max_n of log p_n), BP = exp(1 − r/c) when the predictions' total length c is
    shorter than the references' r, else 1. Any p_n of zero makes BLEU zero, as in the original definition.
    """
    matches, totals = [0] * max_n, [0] * max_n
    c = r = 0
    for prediction, reference in zip(predictions, references, strict=True):
        pred, ref = tokens(prediction), tokens(reference)
        c, r = c + len(pred), r + len(ref)
        for n in range(1, max_n + 1):
            ours, theirs = _ngrams(pred, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(count, theirs[gram]) for gram, count in ours.items())
            totals[n - 1] += max(len(pred) - n + 1, 0)
    if c == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(log_precision)


def text_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {
        "exact_match": exact_match(predictions, references),
        "rouge_l": mean_rouge_l(predictions, references),
        "bleu": corpus_bleu(predictions, references),
    }
