"""Ludwig's `rnn` text encoder: stacked recurrent layers (torch.nn.RNN, LSTM or GRU; optionally bidirectional) over
the embeddings, reduced over the sequence, then fully connected layers.

Rows are packed by length (`pack_padded_sequence`), so the recurrence never reads padding: `reduce_output: last` is
the final state of each direction at the row's own end (the backward direction's at its first token), and a row's
vector is the same whatever the batch around it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tunefork.encoders.sequence import TokenEmbedding, dense_stack, reduce

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class Recurrence(nn.Module):
    """The recurrent stack over (batch, length, width) with a padding mask; (states, final state) out."""

    def __init__(self, width: int, encoder, num_layers: int):
        super().__init__()
        kwargs = {"nonlinearity": encoder.activation} if encoder.cell_type == "rnn" else {}
        self.rnn = CELLS[encoder.cell_type](width, encoder.state_size, num_layers=num_layers, batch_first=True,
                                            bidirectional=encoder.bidirectional,
                                            dropout=encoder.recurrent_dropout if num_layers > 1 else 0.0, **kwargs)
        if encoder.cell_type == "lstm" and encoder.unit_forget_bias:
            size = encoder.state_size
            with torch.no_grad():  # gates are ordered input, forget, cell, output; only one of the two biases is set
                for name, bias in self.rnn.named_parameters():
                    if name.startswith("bias_ih"):
                        bias[size : 2 * size] = 1.0
        self.output_size = encoder.state_size * (2 if encoder.bidirectional else 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        states, final = self.rnn(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=x.shape[1])
        final = final[0] if isinstance(final, tuple) else final  # an lstm's (hidden, cell): the hidden state
        directions = 2 if self.rnn.bidirectional else 1
        last = final[-directions:].transpose(0, 1).reshape(x.shape[0], -1)  # the top layer, each direction
        return states, last


def encode(recurrence: Recurrence, fc: nn.Module, x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    states, last = recurrence(x, mask)
    return fc(last if how == "last" else reduce(states, mask, how))


class RNN(nn.Module):
    def __init__(self, encoder, meta: dict, pretrained: bool, where: str):
        super().__init__()
        self.reduce_output = encoder.reduce_output
        self.embed = TokenEmbedding(encoder, meta, pretrained, where)
        self.recurrence = Recurrence(self.embed.output_size, encoder, encoder.num_layers)
        self.fc, self.output_size = dense_stack(self.recurrence.output_size, encoder.fc_plan())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask > 0
        return encode(self.recurrence, self.fc, self.embed(input_ids), mask, self.reduce_output)
