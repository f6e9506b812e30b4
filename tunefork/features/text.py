"""Text inputs: the encoder's own tokenizer, truncation to `max_sequence_length` (characters cut first, so a huge text
costs what its kept part costs), padding per batch."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tunefork import hf
from tunefork.data import clipping
from tunefork.data.tensors import TokenIds
from tunefork.errors import DataError, TuneforkError

log = logging.getLogger("tunefork.preprocess")
WHERE = "encoder.pretrained_model_name_or_path"  # the key a failed load names


def load_tokenizer(encoder):
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


def fit(values: pd.Series, feature, tokenizer) -> dict:
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


def transform(values: pd.Series, feature, meta: dict, tokenizer) -> TokenIds:
    if len(values) == 0:
        return TokenIds.from_rows([])
    length = meta["max_sequence_length"]
    # cut characters first: the tokenizer would otherwise tokenize the whole text before truncating (data.clipping)
    texts = values.astype(str).map(lambda text: clipping.keep_head(text, length))
    if feature.preprocessing.lowercase:
        texts = texts.str.lower()
    encoded = tokenizer(texts.tolist(), truncation=True, max_length=length, add_special_tokens=True)["input_ids"]
    if any(len(row) == 0 for row in encoded):
        raise DataError(f"text column '{feature.source}': a row tokenizes to nothing")
    return TokenIds.from_rows(encoded)


def batch(column: TokenIds, index: np.ndarray, meta: dict):
    import torch

    ids, mask = column.padded(index, meta["pad_token_id"], left=meta["padding_side"] == "left")
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
