"""Ludwig's `embed` text encoder: token embeddings reduced over the sequence (a bag of words), then fc layers."""

from __future__ import annotations

import torch
from torch import nn

from tunefork.encoders.sequence import TokenEmbedding, dense_stack, reduce


class Embed(nn.Module):
    def __init__(self, encoder, meta: dict, pretrained: bool, where: str):
        super().__init__()
        self.reduce_output = encoder.reduce_output
        self.embed = TokenEmbedding(encoder, meta, pretrained, where)
        self.fc, self.output_size = dense_stack(self.embed.output_size, encoder.fc_plan())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.fc(reduce(self.embed(input_ids), attention_mask > 0, self.reduce_output))
