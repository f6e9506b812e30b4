"""Pieces the text encoders trained from scratch share: the token embedding (optionally from a GloVe file), 1-d
convolution blocks that keep a padding mask, fully connected stacks, and the masked reduction over the sequence.

Padding never changes a row's vector: the padding token embeds to zeros, every convolution block zeroes the padded
positions it outputs, and pooling pads with zeros explicitly, so a row reads the same beside a longer row as alone.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch.nn import functional as F

from tunefork.data import glove
from tunefork.encoders.pooling import last_token_index, pool
from tunefork.models.layers import ACTIVATIONS, Layer, fc_stack

log = logging.getLogger("tunefork")


class TokenEmbedding(nn.Module):
    """Token ids → vectors (Ludwig's EmbedSequence): dense (learned, `min(vocabulary, embedding_size)` wide, as in
    Ludwig), or sparse (fixed one-hot vectors); the padding token is always the zero vector."""

    def __init__(self, encoder, meta: dict, pretrained: bool, where: str):
        super().__init__()
        vocab_size, pad = meta["vocab_size"], meta["pad_token_id"]
        if encoder.representation == "sparse":
            self.embedding = nn.Embedding(vocab_size, vocab_size, padding_idx=pad)
            with torch.no_grad():
                self.embedding.weight.copy_(torch.eye(vocab_size))
                self.embedding.weight[pad] = 0
            self.embedding.weight.requires_grad_(False)
        else:
            vectors = None
            if encoder.pretrained_embeddings and pretrained:  # a loaded model's vectors come from its weights
                vectors, hits = glove.read(encoder.pretrained_embeddings, meta["vocab"], f"{where}.pretrained_embeddings")
                log.info("%s: %d of %d vocabulary words found in %s", where, hits, vocab_size, encoder.pretrained_embeddings)
            size = meta.get("embedding_size") or min(vocab_size, encoder.embedding_size)
            self.embedding = nn.Embedding(vocab_size, size, padding_idx=pad)
            if vectors is not None:
                with torch.no_grad():
                    self.embedding.weight.copy_(torch.from_numpy(vectors))
                    self.embedding.weight[pad] = 0
            self.embedding.weight.requires_grad_(encoder.embeddings_trainable)
        self.dropout = nn.Dropout(encoder.dropout)
        self.output_size = self.embedding.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(ids))


def dense_stack(width: int, layers: list[dict]) -> tuple[nn.Sequential, int]:
    """`models.layers.fc_stack` over an encoder's `fc_plan()` (a dict per layer: output_size, activation, dropout,
    norm, use_bias). Returns (module, output width)."""
    return fc_stack(width, [Layer(**layer) for layer in layers])


def _same_padding(length: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Left and right padding so that the output has ceil(length / stride) positions (TensorFlow's 'same')."""
    span = dilation * (kernel - 1) + 1
    total = max((math.ceil(length / stride) - 1) * stride + span - length, 0)
    return total // 2, total - total // 2


class ConvBlock(nn.Module):
    """Conv1d → norm → activation → dropout → pooling, over (batch, length, channels), carrying the padding mask."""

    def __init__(self, channels: int, layer: dict):
        super().__init__()
        self.layer = layer
        self.conv = nn.Conv1d(channels, layer["num_filters"], layer["filter_size"], stride=layer["strides"],
                              dilation=layer["dilation_rate"], bias=layer["use_bias"])
        norm = layer["norm"]
        self.norm = nn.BatchNorm1d(layer["num_filters"]) if norm == "batch" else (
            nn.LayerNorm(layer["num_filters"]) if norm == "layer" else None)
        self.activation = ACTIVATIONS[layer["activation"]]()
        self.dropout = nn.Dropout(layer["dropout"])
        self.output_size = layer["num_filters"]

    def _window(self, x: torch.Tensor, kernel: int, stride: int, dilation: int, padding: str) -> torch.Tensor:
        """Zeros around `x` for 'same'; for 'valid', zeros after a sequence shorter than one window, so that a short
        text still has one position (torch would refuse it)."""
        if padding == "same":
            return F.pad(x, _same_padding(x.shape[-1], kernel, stride, dilation))
        span = dilation * (kernel - 1) + 1
        return F.pad(x, (0, span - x.shape[-1])) if x.shape[-1] < span else x

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.layer
        kernel, stride, dilation = spec["filter_size"], spec["strides"], spec["dilation_rate"]
        h = self.conv(self._window(x.transpose(1, 2), kernel, stride, dilation, spec["padding"]))
        m = F.max_pool1d(self._window(mask.unsqueeze(1).float(), kernel, stride, dilation, spec["padding"]),
                         kernel, stride, dilation=dilation) if (stride > 1 or spec["padding"] == "valid") else mask.unsqueeze(1).float()
        if self.norm is not None:
            h = self.norm(h) if isinstance(self.norm, nn.BatchNorm1d) else self.norm(h.transpose(1, 2)).transpose(1, 2)
        h = self.dropout(self.activation(h)) * m
        if spec["pool_size"]:
            size, pool_stride = spec["pool_size"], spec["pool_strides"] or spec["pool_size"]
            pad = (_same_padding(h.shape[-1], size, pool_stride) if spec["pool_padding"] == "same"
                   else (0, max(size - h.shape[-1], 0)))
            pooled = F.max_pool1d if spec["pool_function"] == "max" else F.avg_pool1d
            h, m = pooled(F.pad(h, pad), size, pool_stride), F.max_pool1d(F.pad(m, pad), size, pool_stride)
            h = h * m
        return h.transpose(1, 2), m.squeeze(1) > 0


def reduce(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, length, width) → (batch, width) over the real positions only; Ludwig's `avg` is `mean`."""
    if how == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(mask.long())]
    return pool(hidden, mask, "mean" if how == "avg" else how)
