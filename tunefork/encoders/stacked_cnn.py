"""Ludwig's `stacked_cnn` text encoder: 1-d convolutions one after another over the embeddings (six by default,
widths 7, 7, 3, 3, 3, 3, with max pooling of 3 after the first, second and last), reduced over the sequence, then
fully connected layers (512, 256 by default)."""

from __future__ import annotations

import torch
from torch import nn

from tunefork.encoders.sequence import ConvBlock, TokenEmbedding, dense_stack, reduce


def conv_stack(width: int, layers: list[dict]) -> tuple[nn.ModuleList, int]:
    blocks = nn.ModuleList()
    for layer in layers:
        blocks.append(ConvBlock(width, layer))
        width = blocks[-1].output_size
    return blocks, width


def run_stack(blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for block in blocks:
        x, mask = block(x, mask)
    return x, mask


class StackedCNN(nn.Module):
    def __init__(self, encoder, meta: dict, pretrained: bool, where: str):
        super().__init__()
        self.reduce_output = encoder.reduce_output
        self.embed = TokenEmbedding(encoder, meta, pretrained, where)
        self.convs, width = conv_stack(self.embed.output_size, encoder.conv_plan())
        self.fc, self.output_size = dense_stack(width, encoder.fc_plan())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden, mask = run_stack(self.convs, self.embed(input_ids), attention_mask > 0)
        return self.fc(reduce(hidden, mask, self.reduce_output))
