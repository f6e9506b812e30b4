"""Fully connected stacks shared by the combiner and the decoders."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def fc_stack(width: int, sizes: list[int], activation: str, dropout: float, norm: str | None = None):
    """Linear → norm → activation → dropout, per size. Returns (module, output width)."""
    layers: list[nn.Module] = []
    for size in sizes:
        layers.append(nn.Linear(width, size))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(size))
        elif norm == "layer":
            layers.append(nn.LayerNorm(size))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*layers), width
