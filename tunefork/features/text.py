"""Text inputs: the encoder's own tokenizer, truncation to `max_sequence_length`, padding per batch."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tunefork.data.tensors import TokenIds
from tunefork.errors import DataError, TuneforkError

log = logging.getLogger("tunefork.preprocess")


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
    limit = _position_limit(encoder)
    if limit and tokenizer.model_max_length > limit:
        tokenizer.model_max_length = limit  # longer rows would index past the model's position embeddings
    return tokenizer


def _position_limit(encoder) -> int | None:
    """How many positions the model can embed, from its config (tokenizers often ship without a limit)."""
    from transformers import AutoConfig

    kwargs = {k: v for k, v in (encoder.pretrained_kwargs or {}).items() if k in ("gguf_file", "revision", "subfolder")}
    try:
        config = AutoConfig.from_pretrained(encoder.pretrained_model_name_or_path, trust_remote_code=encoder.trust_remote_code, **kwargs)
    except (OSError, ValueError):
        return None
    config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


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
