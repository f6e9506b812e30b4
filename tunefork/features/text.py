"""Text inputs: the encoder's own tokenizer, truncation to `max_sequence_length`, padding per batch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunefork.data.tensors import TokenIds
from tunefork.errors import DataError, TuneforkError


def load_tokenizer(encoder):
    """`AutoTokenizer.from_pretrained` for an auto_transformer config; a decoder without a pad token pads with eos."""
    from transformers import AutoTokenizer

    kwargs = dict(encoder.pretrained_kwargs or {})
    kwargs.pop("dtype", None)
    kwargs.pop("torch_dtype", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            encoder.pretrained_model_name_or_path, trust_remote_code=encoder.trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise TuneforkError(
            f"encoder.pretrained_model_name_or_path '{encoder.pretrained_model_name_or_path}': cannot load its tokenizer "
            f"({str(exc).splitlines()[0]})"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def fit(values: pd.Series, feature, tokenizer) -> dict:
    return {
        "max_sequence_length": feature.preprocessing.max_sequence_length,
        "pad_token_id": int(tokenizer.pad_token_id),
        "padding_side": tokenizer.padding_side,
        "vocab_size": len(tokenizer),
    }


def transform(values: pd.Series, feature, meta: dict, tokenizer) -> TokenIds:
    if len(values) == 0:
        return TokenIds.from_rows([])
    texts = values.astype(str)
    if feature.preprocessing.lowercase:
        texts = texts.str.lower()
    encoded = tokenizer(
        texts.tolist(), truncation=True, max_length=meta["max_sequence_length"], add_special_tokens=True
    )["input_ids"]
    if any(len(row) == 0 for row in encoded):
        raise DataError(f"text column '{feature.source}': a row tokenizes to nothing")
    return TokenIds.from_rows(encoded)


def batch(column: TokenIds, index: np.ndarray, meta: dict):
    import torch

    ids, mask = column.padded(index, meta["pad_token_id"], left=meta["padding_side"] == "left")
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
