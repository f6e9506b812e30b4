"""Ludwig's `cnnrnn` text encoder: stacked 1-d convolutions (two by default, width 5, max pooling of 3 after the
first) shorten the sequence, recurrent layers read what they output, then the reduction and fully connected layers."""

from __future__ import annotations

import torch
from torch import nn

from tunefork.encoders.rnn import Recurrence, encode
from tunefork.encoders.sequence import TokenEmbedding, dense_stack
from tunefork.encoders.stacked_cnn import conv_stack, run_stack


class CNNRNN(nn.Module):
    def __init__(self, encoder, meta: dict, pretrained: bool, where: str):
        super().__init__()
        self.reduce_output = encoder.reduce_output
        self.embed = TokenEmbedding(encoder, meta, pretrained, where)
        self.convs, width = conv_stack(self.embed.output_size, encoder.conv_plan())
        self.recurrence = Recurrence(width, encoder, encoder.num_rec_layers)
        self.fc, self.output_size = dense_stack(self.recurrence.output_size, encoder.fc_plan())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden, mask = run_stack(self.convs, self.embed(input_ids), attention_mask > 0)
        return encode(self.recurrence, self.fc, hidden, mask, self.reduce_output)
