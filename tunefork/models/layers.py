"""Fully connected stacks shared by the combiner and the decoders."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def fc_stack(width: int, layers: list[tuple[int, str, float]], norm: str | None = None):
    """Linear → norm → activation → dropout, one block per `(output size, activation, dropout)`.

    Returns (module, output width). A dropout of 0 adds no module, so a stack without dropout holds (and seeds) the
    same layers whatever way its zeros were given.
    """
    modules: list[nn.Module] = []
    for size, activation, dropout in layers:
        modules.append(nn.Linear(width, size))
        if norm == "batch":
            modules.append(nn.BatchNorm1d(size))
        elif norm == "layer":
            modules.append(nn.LayerNorm(size))
        modules.append(ACTIVATIONS[activation]())
        if dropout:
            modules.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*modules), width
