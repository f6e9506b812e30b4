"""`auto_transformer`: any Hugging Face model as a text encoder, trained in full or frozen.

Frozen (`trainable: false`, Ludwig's default) means eval mode, `inference_mode`, and no parameter in the optimizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tunefork.encoders.pooling import pool
from tunefork.errors import TuneforkError


def is_decoder_only(hf_config) -> bool:
    """True for causal LMs (GPT-2, Llama, Bloom, ...): they have a causal-LM class and no masked-LM / seq2seq one."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    kind = hf_config.model_type
    return (
        kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and kind not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    )


def hf_config(encoder):
    """The model's `AutoConfig` (a small JSON read), to plan before the weights are loaded."""
    from transformers import AutoConfig

    kwargs = {k: v for k, v in (encoder.pretrained_kwargs or {}).items() if k in ("gguf_file", "revision", "subfolder")}
    try:
        return AutoConfig.from_pretrained(encoder.pretrained_model_name_or_path, trust_remote_code=encoder.trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise TuneforkError(
            f"encoder.pretrained_model_name_or_path '{encoder.pretrained_model_name_or_path}': cannot read its config "
            f"({str(exc).splitlines()[0]})"
        ) from None


def _load_kwargs(encoder) -> dict:
    kwargs = dict(encoder.pretrained_kwargs or {})
    kwargs.setdefault("dtype", torch.float32)  # mixed precision is autocast's job; weights stay fp32
    return kwargs


def load_transformer(encoder, saved_config_dir: Path | None = None):
    """The pretrained model, or (when loading a saved tunefork model) the bare architecture to receive its weights."""
    from transformers import AutoConfig, AutoModel

    path = encoder.pretrained_model_name_or_path
    try:
        if saved_config_dir is not None or not encoder.use_pretrained:
            source = saved_config_dir or path
            hf_config = AutoConfig.from_pretrained(source, trust_remote_code=encoder.trust_remote_code)
            return AutoModel.from_config(hf_config, trust_remote_code=encoder.trust_remote_code, dtype=torch.float32)
        return AutoModel.from_pretrained(path, trust_remote_code=encoder.trust_remote_code, **_load_kwargs(encoder))
    except (OSError, ValueError) as exc:
        raise TuneforkError(
            f"encoder.pretrained_model_name_or_path '{path}': cannot load the model ({str(exc).splitlines()[0]})"
        ) from None


class TransformerEncoder(nn.Module):
    def __init__(self, encoder, pooling: str, saved_config_dir: Path | None = None):
        super().__init__()
        self.transformer = load_transformer(encoder, saved_config_dir)
        self.pooling = pooling
        self.trainable = encoder.trainable
        self.output_size = self.transformer.config.hidden_size if hasattr(self.transformer.config, "hidden_size") else (
            self.transformer.get_input_embeddings().embedding_dim
        )
        if not self.trainable:
            self.transformer.requires_grad_(False)
            self.transformer.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.transformer.eval()  # a frozen encoder never runs dropout
        return self

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return pool(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.trainable:
            return self.encode(input_ids, attention_mask)
        with torch.inference_mode():
            pooled = self.encode(input_ids, attention_mask)
        # leave inference mode: the head needs an ordinary tensor it can save for backward
        return pooled.clone()
