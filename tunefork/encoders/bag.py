"""A set input's encoder (Ludwig's set `embed`): the sum of its members' embeddings — `torch.nn.EmbeddingBag` over
the padded member ids, the padding id left out of every bag, so an empty set is the zero vector — then fc layers."""

from __future__ import annotations

import torch
from torch import nn

from tunefork.data import glove
from tunefork.encoders.sequence import dense_stack


class SetBag(nn.Module):
    def __init__(self, encoder, meta: dict, pretrained: bool, where: str):
        super().__init__()
        vocab = meta["vocab"]
        sparse = encoder.representation == "sparse"
        size = len(vocab) if sparse else meta.get("embedding_size") or min(len(vocab), encoder.embedding_size)
        self.bag = nn.EmbeddingBag(len(vocab), size, mode="sum", padding_idx=0)
        with torch.no_grad():
            if sparse:
                self.bag.weight.copy_(torch.eye(len(vocab)))
            elif encoder.pretrained_embeddings and pretrained:
                vectors, _ = glove.read(encoder.pretrained_embeddings, vocab, f"{where}.pretrained_embeddings")
                self.bag.weight.copy_(torch.from_numpy(vectors))
            self.bag.weight[0] = 0
        self.bag.weight.requires_grad_(encoder.embeddings_trainable and not sparse)
        self.dropout = nn.Dropout(encoder.dropout)
        self.fc, self.output_size = dense_stack(size, encoder.fc_plan())

    def forward(self, members: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.bag(members)))
