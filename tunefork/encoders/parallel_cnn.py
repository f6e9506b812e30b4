"""Ludwig's `parallel_cnn` text encoder (its default for text): 1-d convolutions of several widths (2, 3, 4, 5 by
default) run side by side over the embeddings, their filters concatenated per position, reduced over the sequence,
then fully connected layers (512, 256 by default)."""

from __future__ import annotations

import torch
from torch import nn

from tunefork.encoders.sequence import ConvBlock, TokenEmbedding, dense_stack, reduce


class ParallelCNN(nn.Module):
    def __init__(self, encoder, meta: dict, pretrained: bool, where: str):
        super().__init__()
        self.reduce_output = encoder.reduce_output
        self.embed = TokenEmbedding(encoder, meta, pretrained, where)
        self.convs = nn.ModuleList(ConvBlock(self.embed.output_size, layer) for layer in encoder.conv_plan())
        width = sum(conv.output_size for conv in self.convs)
        self.fc, self.output_size = dense_stack(width, encoder.fc_plan())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x, mask = self.embed(input_ids), attention_mask > 0
        outputs = [conv(x, mask) for conv in self.convs]
        # branches that pool or stride differently end at different lengths: the shortest is kept, as in Ludwig
        length = min(h.shape[1] for h, _ in outputs)
        hidden = torch.cat([h[:, :length] for h, _ in outputs], dim=-1)
        return self.fc(reduce(hidden, outputs[0][1][:, :length], self.reduce_output))
