"""The output of a causal LM: generated text (`<name>_response`, Ludwig's column for LLM outputs) and, for a category
output, the label read from that text (`<name>_predictions`).

A category output under `model_type: llm` is classification by generation: the model writes text and the label is
the one whose pattern (decoder.match, or the label itself as a whole word) appears first in it; a text naming no
label gets the fallback label and is counted as such — it is never dropped from the metrics.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from tunefork.errors import ConfigError, DataError, TuneforkError, did_you_mean
from tunefork.features import metrics as m
from tunefork.features.generation_metrics import text_scores


def fit(config, training: pd.DataFrame | None) -> dict:
    """Labels and fallback of a category output (from decoder.match, else the training data); {} for text."""
    feature = config.output
    if feature.type != "category":
        return {}
    match = feature.decoder.match
    counts = Counter(training[feature.source].dropna().astype(str).str.strip()) if training is not None else Counter()
    if match:
        labels = list(match)
    elif counts:
        labels = [label for label, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    else:
        raise TuneforkError(f"output_features[0] '{feature.name}': a category output needs its labels — give "
                            f"decoder.match, or train on labelled data first")
    if len(labels) < 2:
        raise DataError(f"category output '{feature.source}' has {len(labels)} label; classification needs at least 2")
    fallback = feature.preprocessing.fallback_label
    if fallback is not None and fallback not in labels:  # it would be predicted, yet no metric could count it
        raise ConfigError([f"output_features[0].preprocessing.fallback_label: '{fallback}' is not a label of "
                           f"'{feature.source}' (labels: {', '.join(labels[:12])}){did_you_mean(fallback, labels)}"])
    if fallback is None:
        fallback = max(labels, key=lambda label: (counts[label], -labels.index(label)))
    return {"labels": labels, "fallback_label": fallback}


def patterns(config, meta: dict) -> dict[str, re.Pattern]:
    rules = config.output.decoder.match or {}
    out = {}
    for label in meta["labels"]:
        rule = rules.get(label)
        if rule is None:  # the label as a whole word, so "positive" is not found inside "nonpositive"
            out[label] = re.compile(rf"(?<!\w){re.escape(label)}(?!\w)", re.IGNORECASE)
        elif rule.type == "contains":
            out[label] = re.compile(re.escape(rule.value), re.IGNORECASE)
        else:
            out[label] = re.compile(rule.value)
    return out


def extract(responses: list[str], config, meta: dict) -> list[str]:
    """The label found earliest in each response (ties: the longer match, then label order), or the fallback. With
    `constrain_to_vocabulary` the response is the label itself (generation could write nothing else); a response cut
    short by max_new_tokens names none."""
    if config.output.decoder.constrain_to_vocabulary:
        return [text if text in meta["labels"] else meta["fallback_label"] for text in responses]
    compiled = patterns(config, meta)
    labels = []
    for text in responses:
        found = [(hit.start(), -len(hit.group()), i, label) for i, (label, pattern) in enumerate(compiled.items())
                 if (hit := pattern.search(text))]
        labels.append(min(found)[3] if found else meta["fallback_label"])
    return labels


def columns(config, meta: dict, responses: list[str]) -> dict[str, list]:
    name = config.output.name
    if config.output.type == "category":
        return {f"{name}_predictions": extract(responses, config, meta), f"{name}_response": responses}
    return {f"{name}_response": responses}


def metrics(config, meta: dict, responses: list[str], references: list[str]) -> dict:
    """Text: exact match, ROUGE-L, BLEU of the response. Category: accuracy and macro-F1 of the extracted label."""
    if config.output.type != "category":
        return text_scores(responses, references)
    labels = meta["labels"]
    index = {label: i for i, label in enumerate(labels)}
    predicted = np.array([index[label] for label in extract(responses, config, meta)])
    truth = np.array([index.get(str(r).strip(), -1) for r in references])  # a label outside the set is a miss
    matrix = m.confusion_matrix(truth, predicted, len(labels))
    if config.output.decoder.constrain_to_vocabulary:
        named_none = [text not in labels for text in responses]
    else:
        compiled = patterns(config, meta).values()
        named_none = [not any(p.search(text) for p in compiled) for text in responses]
    return {"accuracy": m.accuracy(truth, predicted), "macro_f1": m.macro_f1(matrix), "confusion_matrix": matrix.tolist(),
            "fallback_rate": float(np.mean(named_none)) if responses else float("nan")}
