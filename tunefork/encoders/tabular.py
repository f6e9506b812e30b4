"""Encoders for category, number and binary inputs (Ludwig's dense / onehot / passthrough)."""

from __future__ import annotations

import torch
from torch import nn


class CategoryEmbedding(nn.Module):
    def __init__(self, vocab_size: int, size: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, size)
        self.dropout = nn.Dropout(dropout)
        self.output_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(x))


class OneHot(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.output_size = vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x, self.output_size).float()


class Passthrough(nn.Module):
    output_size = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().unsqueeze(-1)


class DenseNumber(nn.Module):
    def __init__(self, size: int, num_layers: int, dropout: float):
        super().__init__()
        layers, width = [], 1
        for _ in range(num_layers):
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.net = nn.Sequential(*layers)
        self.output_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float().unsqueeze(-1))


def build(feature, meta: dict) -> nn.Module:
    encoder = feature.encoder
    if feature.type == "category":
        vocab = len(meta["vocab"])
        if encoder.type == "onehot":
            return OneHot(vocab)
        return CategoryEmbedding(vocab, encoder.embedding_size, encoder.dropout)
    if feature.type == "number" and encoder.type == "dense":
        return DenseNumber(encoder.output_size, encoder.num_layers, encoder.dropout)
    return Passthrough()
