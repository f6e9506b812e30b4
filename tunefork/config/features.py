"""Input and output feature sections, with Ludwig's key names and defaults.

Each feature type is one class tagged by `type`; the unions at the bottom are the whole registry.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tunefork.adapters.registry import Adapter
from tunefork.config.layers import Activation, BiasInitializer, FCLayer, Initializer, Norm, stack_problem
from tunefork.config.text_encoders import SCRATCH_TEXT_ENCODERS, SetEmbedEncoder
from tunefork.sections import Section, tagged

MissingStrategy = Literal["fill_with_const", "fill_with_mode", "fill_with_mean", "fill_with_false", "bfill", "ffill", "drop_row"]

# --------------------------------------------------------------------------------------------------- encoders


class Quantization(Section):
    """Load the base weights in 4 or 8 bits with bitsandbytes (QLoRA when combined with an adapter). CUDA only."""

    bits: Literal[4, 8] = 4
    llm_int8_threshold: float = Field(6.0, ge=0)
    llm_int8_has_fp16_weight: bool = False
    bnb_4bit_compute_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_quant_type: Literal["fp4", "nf4"] = "nf4"


class TransformerEncoder(Section):
    """Any Hugging Face model loaded with `AutoModel.from_pretrained(pretrained_model_name_or_path)`."""

    type: Literal["auto_transformer"] = "auto_transformer"
    pretrained_model_name_or_path: str = Field(description="Hub id or local folder of the transformer.")
    trainable: bool = Field(
        False,
        description="Fine-tune the transformer's weights (Ludwig's default: frozen). Ignored with an adapter: the "
        "base weights are then frozen and the adapter trains, whether this is true or false.",
    )
    use_pretrained: bool = Field(True, description="Load pretrained weights; false builds the architecture randomly.")
    adapter: Adapter = Field(
        None,
        description="A parameter-efficient fine-tuning method (lora, adalora, adaption_prompt, ia3, loha, lokr, vera, "
        "prompt_tuning, oft, boft, hra, vblora, fourierft, waveft, tinylora, ln_tuning), as `adapter: lora` or a "
        "mapping with a type. The base weights stay frozen and only the adapter and the heads train, whatever "
        "`trainable` says; model/ then holds the adapter, not the base.",
    )
    reduce_output: Literal["auto", "cls_pooled", "mean", "sum", "max", "last"] = Field(
        "auto",
        description="How token states become one vector. 'auto' is a masked mean for encoder models and the last "
        "real token for decoder-only models. Unlike Ludwig's 'sum', padding tokens never count.",
    )
    pretrained_kwargs: dict[str, Any] | None = Field(None, description="Extra keyword arguments for from_pretrained.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model folder. Off unless you say so.")
    quantization: Quantization | None = Field(
        None, description="Load the transformer in 4 or 8 bits (bitsandbytes, CUDA only); with an adapter, QLoRA. "
        "Ludwig's `encoder: {type: llm, quantization: ...}`.")

    @model_validator(mode="after")
    def _adapter_on_pretrained_weights(self):
        if self.adapter is not None and not self.use_pretrained:
            raise ValueError("an adapter needs use_pretrained: true (only the adapter is saved, and a random base "
                             "cannot be rebuilt when the model is loaded)")
        return self

    @model_validator(mode="after")
    def _quantized_weights_do_not_train(self):
        if self.quantization is not None and self.trainable and self.adapter is None:
            raise ValueError("quantized weights cannot be trained directly: add an adapter (QLoRA), or set trainable: "
                             "false, or remove quantization")
        return self

    @model_validator(mode="after")
    def _adapter_trains(self):
        refusal = self.adapter.training_refusal() if self.adapter is not None else None
        if refusal:  # an encoder's adapter always trains
            raise ValueError(f"adapter.{refusal}")
        return self

    @property
    def frozen(self) -> bool:
        """No weight of the transformer's computation trains: its outputs can be computed once and cached."""
        return not self.trainable and self.adapter is None


class DenseCategoryEncoder(Section):
    type: Literal["dense"] = "dense"
    embedding_size: int = Field(50, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class OneHotCategoryEncoder(Section):
    type: Literal["onehot"]


class PassthroughEncoder(Section):
    type: Literal["passthrough"] = "passthrough"


class DenseNumberEncoder(Section):
    type: Literal["dense"]
    output_size: int = Field(256, gt=0)
    num_layers: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


# ---------------------------------------------------------------------------------------------- preprocessing


SPLITTERS = ("space", "space_punct", "characters", "comma", "pipe", "semicolon")
SCRATCH_ONLY = ("vocab_file", "most_common", "padding_symbol", "unknown_symbol", "pretrained_model_name_or_path")


class TextPreprocessing(Section):
    max_sequence_length: int = Field(256, gt=0, description="Tokens kept per text; batches pad to their longest row.")
    lowercase: bool | None = Field(
        None, description="Lowercase the text first. Unset: true for the encoders trained from scratch (Ludwig's "
        "default), false for auto_transformer, whose tokenizer does its own casing.")
    tokenizer: str | None = Field(
        None, description="Encoders trained from scratch: space, space_punct (the default), characters, or a Hugging "
        "Face tokenizer (`hf_tokenizer` with pretrained_model_name_or_path, or its hub id / folder here). "
        "auto_transformer always uses its own tokenizer.")
    pretrained_model_name_or_path: str | None = Field(None, description="The tokenizer `tokenizer: hf_tokenizer` loads.")
    vocab_file: str | None = Field(None, description="One token per line: the vocabulary, in place of most_common.")
    most_common: int = Field(20000, gt=0, description="Vocabulary: the most frequent tokens of the training split.")
    padding_symbol: str = Field("<PAD>", min_length=1, description="The padding token's name in the vocabulary.")
    unknown_symbol: str = Field("<UNK>", min_length=1, description="What a token outside the vocabulary reads as.")
    missing_value_strategy: MissingStrategy = "fill_with_const"
    fill_value: str = ""
    cache_encoder_embeddings: bool = Field(
        False, description="With a frozen encoder, compute pooled embeddings once during preprocessing."
    )

    @model_validator(mode="after")
    def _distinct_symbols(self):
        if self.padding_symbol == self.unknown_symbol:
            raise ValueError("padding_symbol and unknown_symbol must differ")
        return self

    @property
    def splitter(self) -> str | None:
        """The rule tokens are split by, or None for a Hugging Face tokenizer."""
        name = self.tokenizer or "space_punct"
        return name if name in SPLITTERS else None


class CategoryPreprocessing(Section):
    most_common: int = Field(10000, gt=0, description="Keep this many most frequent categories; rarer go to <UNK>.")
    lowercase: bool = False
    missing_value_strategy: MissingStrategy = "fill_with_const"
    fill_value: str = "<UNK>"


class NumberPreprocessing(Section):
    normalization: Literal["zscore", "minmax"] | None = "zscore"
    missing_value_strategy: MissingStrategy = "fill_with_const"
    fill_value: float = 0.0


class BinaryPreprocessing(Section):
    missing_value_strategy: MissingStrategy = "fill_with_false"
    fallback_true_label: str | None = Field(None, description="Which of two non-boolean values means true.")


class SetPreprocessing(Section):
    tokenizer: Literal[SPLITTERS] = Field("space", description="How a cell becomes its members: split on spaces, "
                                          "commas, pipes, semicolons, words and punctuation, or characters.")
    most_common: int = Field(10000, gt=0, description="Keep this many most frequent members; rarer go to <UNK>.")
    lowercase: bool = False
    missing_value_strategy: MissingStrategy = "fill_with_const"
    fill_value: str = Field("", description="A missing cell reads as this (empty: the empty set).")


# An output row without a label cannot be trained on or scored, so outputs drop it by default (Ludwig's default).
# These are classes, not default instances, so a partial `preprocessing:` (or `defaults:`) keeps drop_row.


class CategoryOutputPreprocessing(CategoryPreprocessing):
    missing_value_strategy: MissingStrategy = "drop_row"


class NumberOutputPreprocessing(NumberPreprocessing):
    missing_value_strategy: MissingStrategy = "drop_row"


class BinaryOutputPreprocessing(BinaryPreprocessing):
    missing_value_strategy: MissingStrategy = "drop_row"


class SetOutputPreprocessing(SetPreprocessing):
    missing_value_strategy: MissingStrategy = "drop_row"


# -------------------------------------------------------------------------------------------- output pieces


class Decoder(Section):
    """Fully connected layers between the combiner and the prediction (Ludwig's classifier / regressor). `type` is the
    one decoder each output type has (a saved config's `type: null` reads as it)."""

    type: Literal["classifier"] = "classifier"
    num_fc_layers: int = Field(0, ge=0)
    fc_layers: list[FCLayer] | None = Field(None, description="Explicit layers; overrides num_fc_layers.")
    fc_output_size: int = Field(256, gt=0)
    fc_dropout: float = Field(0.0, ge=0, lt=1)
    fc_activation: Activation = "relu"
    fc_norm: Norm | None = None
    fc_norm_params: dict[str, Any] | None = None
    fc_use_bias: bool = True
    fc_weights_initializer: Initializer | None = Field(None, description="null: PyTorch's default (Kaiming uniform).")
    fc_bias_initializer: BiasInitializer | None = Field(None, description="null: PyTorch's default (uniform by fan-in).")

    @model_validator(mode="after")
    def _norm_params_fit(self):
        problem = stack_problem(self.fc_norm, self.fc_norm_params, self.fc_layers, prefix="fc_")
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="before")
    @classmethod
    def _null_type_is_the_default(cls, data):
        if isinstance(data, dict) and "type" in data and data["type"] is None:
            return {k: v for k, v in data.items() if k != "type"}
        return data


class Regressor(Decoder):
    type: Literal["regressor"] = "regressor"


class CategoryLoss(Section):
    type: Literal["softmax_cross_entropy"] = "softmax_cross_entropy"
    class_weights: list[float] | dict[str, float] | None = Field(None, description="Per-class loss weights.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    weight: float = Field(1.0, ge=0, description="This output's share of the combined loss.")


class BinaryLoss(Section):
    type: Literal["binary_weighted_cross_entropy"] = "binary_weighted_cross_entropy"
    positive_class_weight: float | None = Field(None, gt=0)
    weight: float = Field(1.0, ge=0)


class SetLoss(Section):
    type: Literal["sigmoid_cross_entropy"] = "sigmoid_cross_entropy"
    class_weights: list[float] | dict[str, float] | None = Field(
        None, description="Per-label weight of the positive term (BCEWithLogitsLoss's pos_weight, as in Ludwig).")
    weight: float = Field(1.0, ge=0, description="This output's share of the combined loss.")


class NumberLoss(Section):
    type: Literal["mean_squared_error", "mean_absolute_error", "huber"] = "mean_squared_error"
    weight: float = Field(1.0, ge=0)


# ---------------------------------------------------------------------------------------------------- features


class FeatureBase(Section):
    name: str = Field(min_length=1, description="Also a folder name inside model/: no '/', '\\' or '..'.")
    column: str | None = Field(None, description="Dataset column; defaults to the feature's name.")

    @field_validator("name")
    @classmethod
    def _safe_as_folder_name(cls, name: str) -> str:
        if "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
            raise ValueError(f"feature name {name!r} cannot be a folder name (no '/', '\\', '.' or '..'); rename "
                             "the feature and point `column` at the data's column")
        return name

    @property
    def source(self) -> str:
        return self.column or self.name


class InputFeatureBase(FeatureBase):
    tied: str | None = Field(None, description="Share the encoder (and its weights) of this other input feature.")


class TextInput(InputFeatureBase):
    type: Literal["text"]
    encoder: tagged(TransformerEncoder, *SCRATCH_TEXT_ENCODERS, default="parallel_cnn") = Field(
        default_factory=lambda: SCRATCH_TEXT_ENCODERS[1](),
        description="auto_transformer, or one trained from scratch: embed, parallel_cnn (the default), stacked_cnn, "
        "rnn, cnnrnn.")
    preprocessing: TextPreprocessing = TextPreprocessing()

    @model_validator(mode="after")
    def _preprocessing_fits_the_encoder(self):
        p = self.preprocessing
        moved = [key for key in SCRATCH_ONLY if getattr(p, key) != TextPreprocessing.model_fields[key].default]
        if self.encoder.type == "auto_transformer":
            wrong = moved + (["tokenizer"] if p.tokenizer not in (None, "hf_tokenizer") else [])
            if wrong:
                raise ValueError(f"preprocessing.{wrong[0]} applies to the encoders trained from scratch; "
                                 f"auto_transformer uses its own tokenizer and vocabulary: remove it")
            return self
        if p.cache_encoder_embeddings:
            raise ValueError(f"preprocessing.cache_encoder_embeddings applies to a frozen auto_transformer; the "
                             f"{self.encoder.type} encoder trains: remove it")
        if p.splitter is None and (p.tokenizer == "hf_tokenizer") != bool(p.pretrained_model_name_or_path):
            raise ValueError("preprocessing: tokenizer hf_tokenizer needs pretrained_model_name_or_path (and only it "
                             "reads one); or write the tokenizer's hub id or folder as tokenizer")
        if p.splitter is not None and p.pretrained_model_name_or_path:
            raise ValueError("preprocessing.pretrained_model_name_or_path names the tokenizer of `tokenizer: "
                             "hf_tokenizer`; remove it, or set that tokenizer")
        if p.splitter is None and self.encoder.pretrained_embeddings:
            raise ValueError("encoder.pretrained_embeddings maps words to vectors, and a Hugging Face tokenizer's ids "
                             "are not words here: use tokenizer space_punct (or space) with it")
        vocabulary = [key for key in moved if key != "pretrained_model_name_or_path"]
        if p.splitter is None and vocabulary:
            raise ValueError(f"preprocessing.{vocabulary[0]}: a Hugging Face tokenizer brings its own vocabulary; "
                             f"remove it, or use tokenizer space_punct")
        return self


class CategoryInput(InputFeatureBase):
    type: Literal["category"]
    encoder: tagged(DenseCategoryEncoder, OneHotCategoryEncoder, default="dense") = DenseCategoryEncoder()
    preprocessing: CategoryPreprocessing = CategoryPreprocessing()


class NumberInput(InputFeatureBase):
    type: Literal["number"]
    encoder: tagged(PassthroughEncoder, DenseNumberEncoder, default="passthrough") = PassthroughEncoder()
    preprocessing: NumberPreprocessing = NumberPreprocessing()


class BinaryInput(InputFeatureBase):
    type: Literal["binary"]
    encoder: PassthroughEncoder = PassthroughEncoder()
    preprocessing: BinaryPreprocessing = BinaryPreprocessing()


class SetInput(InputFeatureBase):
    type: Literal["set"]
    encoder: tagged(SetEmbedEncoder, default="embed") = SetEmbedEncoder()
    preprocessing: SetPreprocessing = SetPreprocessing()


class CategoryOutput(FeatureBase):
    type: Literal["category"]
    decoder: Decoder = Decoder()
    loss: CategoryLoss = CategoryLoss()
    top_k: int = Field(3, gt=0)
    preprocessing: CategoryOutputPreprocessing = CategoryOutputPreprocessing()


class BinaryOutput(FeatureBase):
    type: Literal["binary"]
    decoder: Decoder = Decoder()
    loss: BinaryLoss = BinaryLoss()
    threshold: float = Field(0.5, gt=0, lt=1)
    preprocessing: BinaryOutputPreprocessing = BinaryOutputPreprocessing()


class NumberOutput(FeatureBase):
    type: Literal["number"]
    decoder: Regressor = Regressor()
    loss: NumberLoss = NumberLoss()
    clip: tuple[float, float] | None = Field(None, description="Clamp predictions to [min, max].")
    preprocessing: NumberOutputPreprocessing = NumberOutputPreprocessing()

    @model_validator(mode="after")
    def _clip_ordered(self):
        if self.clip is not None and self.clip[0] >= self.clip[1]:
            raise ValueError(f"clip must be [min, max] with min < max, got {list(self.clip)}")
        return self


class SetOutput(FeatureBase):
    type: Literal["set"]
    decoder: Decoder = Decoder()
    loss: SetLoss = SetLoss()
    threshold: float = Field(0.5, gt=0, lt=1, description="A label is predicted when its probability is at least this.")
    preprocessing: SetOutputPreprocessing = SetOutputPreprocessing()


INPUT_TYPES = ("text", "category", "number", "binary", "set")
OUTPUT_TYPES = ("category", "binary", "number", "set")
InputFeature = tagged(TextInput, CategoryInput, NumberInput, BinaryInput, SetInput)
OutputFeature = tagged(CategoryOutput, BinaryOutput, NumberOutput, SetOutput)


def is_transformer(feature) -> bool:
    """A text input encoded by a Hugging Face transformer (not by one of the encoders trained from scratch)."""
    return feature.type == "text" and feature.encoder.type == "auto_transformer"
