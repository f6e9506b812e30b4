"""Fully connected stacks shared by the combiner and the decoders, and Ghost Batch Normalization.

Ghost Batch Normalization (Hoffer, Hubara & Soudry, "Train longer, generalize better", 2017, §4) normalises each
`virtual_batch_size` slice of a training batch by that slice's own statistics: large batches then regularise like
small ones. torch has no such layer, so it is written here as Ludwig's `GhostBatchNormalization` is — one
`BatchNorm1d` (Ludwig's defaults: momentum 0.05, epsilon 1e-3) applied slice by slice, its running statistics
updated by each slice, and the whole batch at once at evaluation; tests/test_trainer_keys.py checks it against
BatchNorm1d on each slice.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
               "elu": nn.ELU, "leakyRelu": nn.LeakyReLU}  # the last three: the scratch text encoders' (Ludwig's)
INITIALIZERS = {
    "zeros": nn.init.zeros_, "ones": nn.init.ones_, "identity": nn.init.eye_, "orthogonal": nn.init.orthogonal_,
    "normal": nn.init.normal_, "uniform": nn.init.uniform_, "truncated_normal": nn.init.trunc_normal_,
    "xavier_normal": nn.init.xavier_normal_, "glorot_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_, "glorot_uniform": nn.init.xavier_uniform_,
    "kaiming_normal": nn.init.kaiming_normal_, "he_normal": nn.init.kaiming_normal_,
    "kaiming_uniform": nn.init.kaiming_uniform_, "he_uniform": nn.init.kaiming_uniform_,
}


class GhostBatchNorm(nn.Module):
    def __init__(self, width: int, virtual_batch_size: int = 128, momentum: float = 0.05, epsilon: float = 1e-3):
        super().__init__()
        self.virtual_batch_size = virtual_batch_size
        self.bn = nn.BatchNorm1d(width, momentum=momentum, eps=epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or len(x) <= self.virtual_batch_size:
            return self.bn(x)
        slices = list(x.split(self.virtual_batch_size))
        if len(slices[-1]) == 1:  # one row has no variance: it joins the slice before
            slices[-2:] = [torch.cat(slices[-2:])]
        return torch.cat([self.bn(part) for part in slices])


@dataclass(frozen=True)
class Layer:
    """One fully connected layer, every key resolved (an `fc_layers` entry over its stack's values)."""

    output_size: int
    activation: str
    dropout: float
    norm: str | None = None
    norm_params: dict | None = None
    use_bias: bool = True
    weights_initializer: str | None = None
    bias_initializer: str | None = None


def stack_layers(section, prefix: str = "") -> list[Layer]:
    """The layers of a combiner (`prefix` "") or a decoder (`prefix` "fc_"): `fc_layers` entries over the stack's
    values (Ludwig's rule: an entry's unset key is the stack's), else `num_fc_layers` copies of the stack's."""
    base = Layer(**{f.name: getattr(section, prefix + f.name) for f in fields(Layer)
                    if hasattr(section, prefix + f.name)})
    if section.fc_layers:
        return [replace(base, **{k: v for k, v in entry.model_dump().items() if v is not None})
                for entry in section.fc_layers]
    return [base] * section.num_fc_layers


def _norm(layer: Layer) -> nn.Module | None:
    params = dict(layer.norm_params or {})
    if layer.norm == "batch":
        return nn.BatchNorm1d(layer.output_size, **params)
    if layer.norm == "layer":
        return nn.LayerNorm(layer.output_size, **params)
    if layer.norm == "ghost":
        return GhostBatchNorm(layer.output_size, **params)
    return None


def _linear(width: int, layer: Layer) -> nn.Linear:
    linear = nn.Linear(width, layer.output_size, bias=layer.use_bias)
    if layer.weights_initializer:
        INITIALIZERS[layer.weights_initializer](linear.weight)
    if layer.bias_initializer and linear.bias is not None:
        INITIALIZERS[layer.bias_initializer](linear.bias)
    return linear


def fc_stack(width: int, layers: list[Layer]):
    """Linear → norm → activation → dropout, one block per layer. Returns (module, output width).

    A dropout of 0 adds no module, so a stack without dropout holds (and seeds) the same layers whatever way its zeros
    were given.
    """
    modules: list[nn.Module] = []
    for layer in layers:
        modules.append(_linear(width, layer))
        norm = _norm(layer)
        if norm is not None:
            modules.append(norm)
        modules.append(ACTIVATIONS[layer.activation]())
        if layer.dropout:
            modules.append(nn.Dropout(layer.dropout))
        width = layer.output_size
    return nn.Sequential(*modules), width
