"""Text inputs: token ids, truncation to `max_sequence_length` (characters cut first, so a huge text costs what its
kept part costs), padding per batch.

An auto_transformer reads its own tokenizer's ids. The encoders trained from scratch read ids into a vocabulary fitted
on the training split (Ludwig's `space_punct` / `space` / `characters` rules, `most_common` or a `vocab_file`;
`[padding_symbol, unknown_symbol]` first), or a Hugging Face tokenizer's own ids. A text with no token reads as one
unknown token, so an empty cell is a row like any other.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tunefork import hf
from tunefork.config.features import is_transformer
from tunefork.data import clipping, glove
from tunefork.data.tensors import TokenIds
from tunefork.errors import DataError, TuneforkError
from tunefork.features import tokens

log = logging.getLogger("tunefork.preprocess")
WHERE = "encoder.pretrained_model_name_or_path"  # the key a failed load names


def load_tokenizer(feature, saved=None):
    """The feature's tokenizer: a rule (`tokens.Splitter`), or a Hugging Face tokenizer — from the model folder's
    `saved` copy when there is one."""
    if is_transformer(feature):
        return _transformer_tokenizer(feature.encoder) if saved is None else hf.load_tokenizer(
            saved, None, feature.encoder.trust_remote_code, where="model folder")
    preprocessing = feature.preprocessing
    if preprocessing.splitter is not None:
        return tokens.Splitter(preprocessing.splitter)
    source = preprocessing.pretrained_model_name_or_path or preprocessing.tokenizer
    where = ("preprocessing.pretrained_model_name_or_path" if preprocessing.pretrained_model_name_or_path
             else "preprocessing.tokenizer")
    return hf.load_tokenizer(saved or source, None, False, where="model folder" if saved else where)


def _transformer_tokenizer(encoder):
    """The auto_transformer's tokenizer (padding with eos when it has no pad token), cut to the positions the model
    can embed: longer rows would index past its position embeddings, and tokenizers often ship without a limit."""
    source, kwargs, trust = encoder.pretrained_model_name_or_path, encoder.pretrained_kwargs, encoder.trust_remote_code
    tokenizer = hf.load_tokenizer(source, kwargs, trust, where=WHERE)
    try:
        limit = hf.context_length(hf.load_config(source, kwargs, trust, where=WHERE))
    except TuneforkError:
        limit = None  # a tokenizer without a model config beside it: nothing to cut to here
    if limit and tokenizer.model_max_length > limit:
        tokenizer.model_max_length = limit
    return tokenizer


def lowercase(feature) -> bool:
    asked = feature.preprocessing.lowercase
    return (not is_transformer(feature)) if asked is None else asked


def _texts(values: pd.Series, feature, length: int) -> pd.Series:
    # cut characters first: a tokenizer would otherwise read the whole text before truncating (data.clipping)
    texts = values.astype(str).map(lambda text: clipping.keep_head(text, length))
    return texts.str.lower() if lowercase(feature) else texts


def fit(values: pd.Series, feature, tokenizer) -> dict:
    if not is_transformer(feature):
        return _fit_vocabulary(values, feature, tokenizer)
    asked = feature.preprocessing.max_sequence_length
    length = min(asked, tokenizer.model_max_length)
    if length < asked:
        log.info("%s: max_sequence_length %d is more than the model takes; using %d", feature.name, asked, length)
    return {
        "max_sequence_length": length,
        "pad_token_id": int(tokenizer.pad_token_id),
        "padding_side": tokenizer.padding_side,
        "vocab_size": len(tokenizer),
    }


def _fit_vocabulary(values: pd.Series, feature, tokenizer) -> dict:
    p = feature.preprocessing
    meta = {"max_sequence_length": p.max_sequence_length, "padding_side": "right"}
    if feature.encoder.representation == "dense" and feature.encoder.pretrained_embeddings:
        meta["embedding_size"] = glove.size(feature.encoder.pretrained_embeddings,
                                            f"input feature '{feature.name}': encoder.pretrained_embeddings")
    if not isinstance(tokenizer, tokens.Splitter):  # a Hugging Face tokenizer: its own ids and vocabulary
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return {**meta, "pad_token_id": int(pad), "vocab_size": len(tokenizer)}
    if p.vocab_file is not None:
        words = tokens.read_vocab_file(p.vocab_file, f"input feature '{feature.name}': preprocessing.vocab_file")
    else:
        rows = _texts(values, feature, p.max_sequence_length).map(tokenizer.split)
        words = [word for word, _ in tokens.most_common(rows, p.most_common)]
    special = [p.padding_symbol, p.unknown_symbol]
    vocab = special + [word for word in words if word not in special]
    return {**meta, "vocab": vocab, "vocab_size": len(vocab), "pad_token_id": 0, "unk_token_id": 1}


def transform(values: pd.Series, feature, meta: dict, tokenizer) -> TokenIds:
    if len(values) == 0:
        return TokenIds.from_rows([])
    length = meta["max_sequence_length"]
    texts = _texts(values, feature, length)
    if isinstance(tokenizer, tokens.Splitter):
        index, unknown = {word: i for i, word in enumerate(meta["vocab"])}, meta["unk_token_id"]
        return TokenIds.from_rows([[index.get(t, unknown) for t in tokenizer.split(text)[:length]] or [unknown]
                                   for text in texts])
    encoded = tokenizer(texts.tolist(), truncation=True, max_length=length, add_special_tokens=True)["input_ids"]
    if any(len(row) == 0 for row in encoded):
        if is_transformer(feature):
            raise DataError(f"text column '{feature.source}': a row tokenizes to nothing")
        encoded = [row or [tokenizer.unk_token_id or 0] for row in encoded]
    return TokenIds.from_rows(encoded)


def batch(column: TokenIds, index: np.ndarray, meta: dict):
    import torch

    ids, mask = column.padded(index, meta["pad_token_id"], left=meta["padding_side"] == "left")
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
