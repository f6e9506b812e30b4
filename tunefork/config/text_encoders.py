"""Ludwig's text encoders trained from scratch (`embed`, `parallel_cnn`, `stacked_cnn`, `rnn`, `cnnrnn`) and the
set feature's `embed` encoder: key names and defaults as in Ludwig's schema (ludwig/schema/encoders/
sequence_encoders.py, set_encoders.py). The modules they build are under `tunefork/encoders/`.

Per-layer lists (`conv_layers`, `fc_layers`) take the same keys as the encoder; a key a layer leaves out takes the
encoder's value. Ludwig keys that would change nothing here (initializers, `embeddings_on_cpu`, ...) are read by
`config.ludwig`: at Ludwig's default they are dropped with a log line, otherwise refused with what to write.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunefork.sections import Section

Activation = Literal["relu", "tanh", "sigmoid", "gelu", "silu", "elu", "leakyRelu"]
Reduction = Literal["sum", "mean", "avg", "max", "last"]
Norm = Literal["batch", "layer"] | None
Padding = Literal["same", "valid"]
Cell = Literal["rnn", "lstm", "gru"]


class FCLayer(Section):
    """One fully connected layer after the sequence is reduced; a key left out takes the encoder's value."""

    output_size: int | None = Field(None, gt=0)
    activation: Activation | None = None
    dropout: float | None = Field(None, ge=0, lt=1)
    norm: Norm = None
    use_bias: bool | None = None


class ConvLayer(Section):
    """One 1-d convolution (then norm, activation, dropout and pooling); a key left out takes the encoder's value."""

    filter_size: int | None = Field(None, gt=0)
    num_filters: int | None = Field(None, gt=0)
    strides: int | None = Field(None, gt=0)
    padding: Padding | None = None
    dilation_rate: int | None = Field(None, gt=0)
    pool_function: Literal["max", "mean", "avg"] | None = None
    pool_size: int | None = Field(None, gt=0)
    pool_strides: int | None = Field(None, gt=0)
    pool_padding: Padding | None = None
    activation: Activation | None = None
    dropout: float | None = Field(None, ge=0, lt=1)
    norm: Norm = None
    use_bias: bool | None = None


class Embedding(Section):
    """The token embedding every encoder here starts with (Ludwig's EmbedSequence)."""

    representation: Literal["dense", "sparse"] = Field(
        "dense", description="dense: learned vectors of embedding_size; sparse: fixed one-hot vectors of the vocabulary.")
    embedding_size: int = Field(256, gt=0, description="Vector size (at most the vocabulary size, as in Ludwig).")
    embeddings_trainable: bool = Field(True, description="false keeps the (e.g. pretrained) vectors fixed.")
    pretrained_embeddings: str | None = Field(
        None, description="A GloVe-format text file (`word v1 v2 ...` per line). Vocabulary words found there start "
        "from their vector, the others from the file's mean plus noise; embedding_size becomes the file's.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the embeddings (and the layers' default).")

    @model_validator(mode="after")
    def _sparse_is_fixed(self):
        if self.representation == "sparse" and self.pretrained_embeddings is not None:
            raise ValueError("pretrained_embeddings needs representation: dense (sparse vectors are fixed one-hots)")
        return self


class FullyConnected(Section):
    """The fully connected stack after the reduction (Ludwig's `fc_layers` / `num_fc_layers` / `output_size`)."""

    fc_layers: list[FCLayer] | None = None
    num_fc_layers: int | None = Field(None, ge=0)
    output_size: int = Field(256, gt=0, description="Each fully connected layer's size unless its entry says.")
    norm: Norm = Field(None, description="Normalisation after each layer (convolution and fully connected).")
    use_bias: bool = True

    def fc_specs(self, default_layers: int, activation: str, dropout: float) -> list[dict]:
        """Each fully connected layer's settings, per-layer keys over the encoder's."""
        layers = self.fc_layers
        if layers is None:
            count = self.num_fc_layers if self.num_fc_layers is not None else default_layers
            layers = [FCLayer()] * count
        base = {"output_size": self.output_size, "activation": activation, "dropout": dropout, "norm": self.norm,
                "use_bias": self.use_bias}
        return [{**base, **layer.model_dump(exclude_none=True)} for layer in layers]


class EmbedEncoder(Embedding, FullyConnected):
    """Embeddings reduced over the sequence: a bag of words."""

    type: Literal["embed"] = "embed"
    reduce_output: Reduction = "sum"
    num_fc_layers: int | None = Field(0, ge=0)

    def fc_plan(self) -> list[dict]:
        return self.fc_specs(0, "relu", self.dropout)


class _Convolutions(Section):
    conv_layers: list[ConvLayer] | None = None
    num_conv_layers: int | None = Field(None, gt=0)
    num_filters: int = Field(256, gt=0)
    filter_size: int = Field(3, gt=0)
    pool_function: Literal["max", "mean", "avg"] = "max"
    pool_size: int | None = Field(None, gt=0)
    activation: Activation = "relu"

    def conv_specs(self, default_layers: list[dict], dropout: float, activation: str | None = None,
                   norm=None, use_bias: bool = True) -> list[dict]:
        """Each convolution's settings: `conv_layers`, else `num_conv_layers` plain ones, else Ludwig's default list."""
        if self.conv_layers is not None:
            layers = [layer.model_dump(exclude_none=True) for layer in self.conv_layers]
        elif self.num_conv_layers is not None:
            layers = [{}] * self.num_conv_layers
        else:
            layers = default_layers
        base = {"filter_size": self.filter_size, "num_filters": self.num_filters, "strides": getattr(self, "strides", 1),
                "padding": getattr(self, "padding", "same"), "dilation_rate": getattr(self, "dilation_rate", 1),
                "pool_function": self.pool_function, "pool_size": self.pool_size,
                "pool_strides": getattr(self, "pool_strides", None), "pool_padding": getattr(self, "pool_padding", "same"),
                "activation": activation or self.activation, "dropout": dropout, "norm": norm, "use_bias": use_bias}
        return [{**base, **layer} for layer in layers]


class ParallelCNNEncoder(Embedding, _Convolutions, FullyConnected):
    """Convolutions of several widths side by side over the embeddings, concatenated, reduced, then fc layers."""

    type: Literal["parallel_cnn"] = "parallel_cnn"
    reduce_output: Reduction = "sum"

    def conv_plan(self) -> list[dict]:
        widths = [{"filter_size": size} for size in (2, 3, 4, 5)]
        return self.conv_specs(widths, self.dropout, norm=self.norm, use_bias=self.use_bias)

    def fc_plan(self) -> list[dict]:
        return _ludwig_fc(self)


class _Strided(Section):
    strides: int = Field(1, gt=0)
    padding: Padding = "same"
    dilation_rate: int = Field(1, gt=0)
    pool_strides: int | None = Field(None, gt=0, description="Pooling stride; defaults to pool_size.")
    pool_padding: Padding = "same"


class StackedCNNEncoder(Embedding, _Convolutions, _Strided, FullyConnected):
    """Convolutions one after another (with pooling shortening the sequence), reduced, then fc layers."""

    type: Literal["stacked_cnn"] = "stacked_cnn"
    reduce_output: Reduction = "sum"

    def conv_plan(self) -> list[dict]:
        layers = [{"filter_size": 7, "pool_size": 3}, {"filter_size": 7, "pool_size": 3},
                  *[{"filter_size": 3, "pool_size": None}] * 3, {"filter_size": 3, "pool_size": 3}]
        return self.conv_specs(layers, self.dropout, norm=self.norm, use_bias=self.use_bias)

    def fc_plan(self) -> list[dict]:
        return _ludwig_fc(self)


def _ludwig_fc(encoder) -> list[dict]:
    """Ludwig's CNN encoders add two fc layers (512, then 256) unless `fc_layers` or `num_fc_layers` is given."""
    if encoder.fc_layers is None and encoder.num_fc_layers is None:
        base = encoder.fc_specs(1, encoder.activation, encoder.dropout)[0]
        return [{**base, "output_size": 512}, {**base, "output_size": 256}]
    return encoder.fc_specs(0, encoder.activation, encoder.dropout)


class _Recurrent(Section):
    cell_type: Cell = Field("rnn", description="rnn, lstm or gru (torch.nn.RNN / LSTM / GRU).")
    state_size: int = Field(256, gt=0)
    bidirectional: bool = Field(False, description="A second recurrence reads the text backwards; outputs concatenated.")
    recurrent_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout between stacked recurrent layers.")
    activation: Literal["tanh", "relu"] = Field("tanh", description="The rnn cell's nonlinearity (lstm and gru: tanh).")
    unit_forget_bias: bool = Field(True, description="lstm: the forget gate's bias starts at 1.")
    num_fc_layers: int | None = Field(0, ge=0)
    fc_activation: Activation = "relu"
    fc_dropout: float = Field(0.0, ge=0, lt=1)
    reduce_output: Reduction = "last"

    @model_validator(mode="after")
    def _activation_of_the_cell(self):
        if self.activation != "tanh" and self.cell_type != "rnn":
            raise ValueError(f"activation {self.activation} applies to cell_type rnn only; {self.cell_type} uses tanh")
        return self

    def fc_plan(self) -> list[dict]:
        return self.fc_specs(0, self.fc_activation, self.fc_dropout)


class RNNEncoder(Embedding, _Recurrent, FullyConnected):
    """A stack of recurrent layers over the embeddings (padding skipped), reduced, then fc layers."""

    type: Literal["rnn"] = "rnn"
    num_layers: int = Field(1, ge=1)


class CNNRNNEncoder(Embedding, _Recurrent, _Convolutions, _Strided, FullyConnected):
    """Stacked convolutions, then recurrent layers over their output, reduced, then fc layers."""

    type: Literal["cnnrnn"] = "cnnrnn"
    num_rec_layers: int = Field(1, ge=1)
    filter_size: int = Field(5, gt=0)
    pool_size: int | None = Field(2, gt=0)
    conv_activation: Activation = "relu"
    conv_dropout: float = Field(0.0, ge=0, lt=1)

    def conv_plan(self) -> list[dict]:
        return self.conv_specs([{"pool_size": 3}, {"pool_size": None}], self.conv_dropout, self.conv_activation,
                               norm=self.norm, use_bias=self.use_bias)


class SetEmbedEncoder(Embedding, FullyConnected):
    """A set input: the sum of its members' embeddings (an embedding bag), then fc layers (Ludwig's set `embed`)."""

    type: Literal["embed"] = "embed"
    embedding_size: int = Field(50, gt=0)
    num_fc_layers: int | None = Field(0, ge=0)
    output_size: int = Field(10, gt=0)
    activation: Activation = "relu"

    def fc_plan(self) -> list[dict]:
        return self.fc_specs(0, self.activation, self.dropout)


SCRATCH_TEXT_ENCODERS = (EmbedEncoder, ParallelCNNEncoder, StackedCNNEncoder, RNNEncoder, CNNRNNEncoder)
