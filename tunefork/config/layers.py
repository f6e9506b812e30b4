"""Fully connected layers as Ludwig writes them, on combiners and decoders: `fc_layers` entries and the stack's own
norm, its parameters, bias and initializers (`models.layers.fc_stack` builds them).

An `fc_layers` entry's unset key takes the stack's value (Ludwig's rule). `norm_params` are the norm's own keyword
arguments, checked here by norm: `batch` → torch's BatchNorm1d, `layer` → LayerNorm, `ghost` → Ghost Batch
Normalization (Hoffer et al. 2017) with Ludwig's keys `virtual_batch_size`, `momentum`, `epsilon`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tunefork.errors import did_you_mean
from tunefork.sections import Section

Activation = Literal["relu", "gelu", "tanh", "silu"]
Norm = Literal["batch", "layer", "ghost"]
# Ludwig's initializer names → torch.nn.init (models.layers.INITIALIZERS)
Initializer = Literal["zeros", "ones", "identity", "orthogonal", "normal", "uniform", "truncated_normal",
                      "xavier_normal", "xavier_uniform", "glorot_normal", "glorot_uniform", "kaiming_normal",
                      "kaiming_uniform", "he_normal", "he_uniform"]
BiasInitializer = Literal["zeros", "ones", "normal", "uniform", "truncated_normal"]  # those a 1-D tensor takes
NORM_PARAMS = {"batch": ("momentum", "eps", "affine", "track_running_stats"),
               "layer": ("eps", "elementwise_affine"),
               "ghost": ("virtual_batch_size", "momentum", "epsilon")}


def norm_params_problem(norm: str | None, params: dict | None) -> str | None:
    """Why `params` cannot go with `norm`, or None."""
    if not params:
        return None
    if norm is None:
        return "norm_params without a norm; set norm: batch, layer or ghost, or remove norm_params"
    for key, value in params.items():
        if key not in NORM_PARAMS[norm]:
            return (f"norm_params.{key}: not a parameter of the {norm} norm (one of: {', '.join(NORM_PARAMS[norm])})"
                    f"{did_you_mean(key, NORM_PARAMS[norm])}")
        if key == "virtual_batch_size" and not (isinstance(value, int) and not isinstance(value, bool) and value > 1):
            return f"norm_params.virtual_batch_size: a whole number of rows above 1, got {value!r}"
    return None


class FCLayer(Section):
    """One layer of an explicit `fc_layers` list; null keys take the stack's value."""

    output_size: int | None = Field(None, gt=0)
    dropout: float | None = Field(None, ge=0, lt=1)
    activation: Activation | None = None
    norm: Norm | None = None
    norm_params: dict[str, Any] | None = None
    use_bias: bool | None = None
    weights_initializer: Initializer | None = None
    bias_initializer: BiasInitializer | None = None


def stack_problem(norm: str | None, params: dict | None, layers: list[FCLayer] | None, prefix: str = "") -> str | None:
    """Why a stack's norm parameters do not fit the norm each of its layers ends up with (Ludwig's inheritance: a
    layer's unset norm and norm_params are the stack's), or None."""
    pairs = ([(layer.norm or norm, layer.norm_params if layer.norm_params is not None else params) for layer in layers]
             if layers else [(norm, params)])
    for i, (layer_norm, layer_params) in enumerate(pairs):
        problem = norm_params_problem(layer_norm, layer_params)
        if problem:
            return f"fc_layers[{i}].{problem}" if layers else f"{prefix}{problem}"
    return None


class FCStack(Section):
    """The keys a combiner shares with its layers (a decoder's are spelled with `fc_`: `features.Decoder`)."""

    norm: Norm | None = None
    norm_params: dict[str, Any] | None = Field(None, description="The norm's parameters, e.g. {virtual_batch_size: 64} "
                                               "for ghost.")
    use_bias: bool = True
    weights_initializer: Initializer | None = Field(None, description="null: PyTorch's default (Kaiming uniform).")
    bias_initializer: BiasInitializer | None = Field(None, description="null: PyTorch's default (uniform by fan-in).")

    @model_validator(mode="after")
    def _norm_params_fit(self):
        problem = stack_problem(self.norm, self.norm_params, getattr(self, "fc_layers", None))
        if problem:
            raise ValueError(problem)
        return self
