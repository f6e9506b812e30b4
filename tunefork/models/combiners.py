"""Combiners: how the inputs' vectors become one (Ludwig's `concat` and `comparator`)."""

from __future__ import annotations

import torch
from torch import nn

from tunefork.models.layers import fc_stack, stack_layers


class Concat(nn.Module):
    """Every input's vector side by side, then optional fully connected layers."""

    def __init__(self, section, widths: dict[str, int]):
        super().__init__()
        self.names = list(widths)
        self.fc, self.output_size = fc_stack(sum(widths.values()), stack_layers(section))

    def forward(self, vectors: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [vectors[name] for name in self.names]
        return self.fc(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])


class Comparator(nn.Module):
    """Two entities (groups of inputs) compared: [e1, e2, e1·e2, |e1 − e2|] — the interaction terms a concatenation
    cannot express, and what sentence-pair tasks such as STS-B need (Reimers & Gurevych, Sentence-BERT, 2019, §3).
    Each entity is its inputs concatenated and projected by fully connected layers, shared when both entities have
    the same width so that the comparison is symmetric."""

    def __init__(self, section, widths: dict[str, int]):
        super().__init__()
        self.entity_1, self.entity_2 = list(section.entity_1), list(section.entity_2)
        width_1 = sum(widths[n] for n in self.entity_1)
        width_2 = sum(widths[n] for n in self.entity_2)
        layers = stack_layers(section)
        self.project_1, out_1 = fc_stack(width_1, layers)
        self.project_2, out_2 = (self.project_1, out_1) if width_1 == width_2 else fc_stack(width_2, layers)
        self.output_size = 4 * out_1

    def forward(self, vectors: dict[str, torch.Tensor]) -> torch.Tensor:
        e1 = self.project_1(torch.cat([vectors[n] for n in self.entity_1], dim=-1))
        e2 = self.project_2(torch.cat([vectors[n] for n in self.entity_2], dim=-1))
        return torch.cat([e1, e2, e1 * e2, (e1 - e2).abs()], dim=-1)


def build(section, widths: dict[str, int]) -> nn.Module:
    return Comparator(section, widths) if section.type == "comparator" else Concat(section, widths)
