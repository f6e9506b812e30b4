"""Scores of generated text against one reference per row: exact match, ROUGE-L and corpus BLEU.

ROUGE-L is Google's `rouge-score` (the reimplementation of ROUGE-1.5.5 that Hugging Face `evaluate` calls) and BLEU
is `sacrebleu` (Post 2018, the implementation papers report), each with its defaults, so the numbers compare with
numbers published elsewhere (README, Metrics):

- ROUGE-L: `RougeScorer(["rougeL"], use_stemmer=False)`, the F-measure of the longest common subsequence, averaged
  over rows. Its tokenizer lower-cases and keeps runs of ASCII letters and digits only ("Paris." and "paris ." agree;
  "café" loses its "é"); a row with an empty side scores 0, even when both are empty.
- BLEU: `sacrebleu.corpus_bleu` with its default signature `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp`: n-gram
  counts added over the corpus, up to 4-grams, exponential smoothing of zero counts, case-sensitive, reported on a
  0–1 scale (sacrebleu's score / 100) like every other tunefork metric.
- exact match stays a line of Python: the share of rows equal after stripping surrounding whitespace. A library
  (`evaluate`'s exact_match) would add a dependency for the same comparison.

Both libraries are imported inside the functions: rouge-score loads nltk, which takes seconds.
"""

from __future__ import annotations

import logging

log = logging.getLogger("tunefork.evaluate")


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of rows whose prediction equals the reference, surrounding whitespace ignored."""
    if not references:
        return float("nan")
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(references)


def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of one pair (Lin 2004), as rouge-score computes it."""
    return float(_scorer().score(str(reference), str(prediction))["rougeL"].fmeasure)


def _beyond_ascii(text: str) -> bool:
    return any(c.isalnum() and not c.isascii() for c in text)


def mean_rouge_l(predictions: list[str], references: list[str]) -> float:
    if not references:
        return float("nan")
    scorer = _scorer()
    pairs = list(zip(map(str, predictions), map(str, references), strict=True))
    dropped = sum(_beyond_ascii(p) or _beyond_ascii(r) for p, r in pairs)
    if dropped:  # rouge-score's tokenizer would silently score such rows on what is left of them
        log.warning("ROUGE-L: %d of %d rows have letters outside ASCII, which rouge-score's tokenizer drops; "
                    "their ROUGE-L reads only the ASCII letters and digits (BLEU and exact match read all)",
                    dropped, len(pairs))
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / len(pairs)


def corpus_bleu(predictions: list[str], references: list[str], max_n: int = 4) -> float:
    """sacrebleu's corpus BLEU with its defaults (max_n maps to its `max_ngram_order`), on a 0–1 scale."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return float("nan")
    from sacrebleu.metrics import BLEU

    bleu = BLEU(max_ngram_order=max_n)
    return bleu.corpus_score([str(p) for p in predictions], [[str(r) for r in references]]).score / 100


def text_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {
        "exact_match": exact_match(predictions, references),
        "rouge_l": mean_rouge_l(predictions, references),
        "bleu": corpus_bleu(predictions, references),
    }
