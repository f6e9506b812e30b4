"""The whole config: what `config.load` returns. Frozen; derived values live in `plan.resolve`, not here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunefork.config.base import Section, tagged
from tunefork.config.features import InputFeature, OutputFeature
from tunefork.config.trainer import Trainer


class FCLayer(Section):
    output_size: int = Field(gt=0)
    dropout: float | None = Field(None, ge=0, lt=1)
    activation: Literal["relu", "gelu", "tanh", "silu"] | None = None


class ConcatCombiner(Section):
    """Concatenates every input's vector, then optional fully connected layers."""

    type: Literal["concat"] = "concat"
    num_fc_layers: int = Field(0, ge=0)
    output_size: int = Field(256, gt=0)
    fc_layers: list[FCLayer] | None = Field(None, description="Explicit layers; overrides num_fc_layers.")
    dropout: float = Field(0.0, ge=0, lt=1)
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    norm: Literal["batch", "layer"] | None = None


class RandomSplit(Section):
    type: Literal["random"] = "random"
    probabilities: tuple[float, float, float] = (0.7, 0.1, 0.2)

    @model_validator(mode="after")
    def _sums_to_one(self):
        if abs(sum(self.probabilities) - 1.0) > 1e-6 or min(self.probabilities) < 0:
            raise ValueError(f"probabilities must be three non-negative numbers summing to 1, got {list(self.probabilities)}")
        return self


class StratifySplit(RandomSplit):
    type: Literal["stratify"]
    column: str


class FixedSplit(Section):
    type: Literal["fixed"]
    column: str = Field("split", description="0/1/2 or train/validation/test per row.")


Split = tagged(RandomSplit, StratifySplit, FixedSplit, default="random")


class Preprocessing(Section):
    split: Split = RandomSplit()
    sample_ratio: float = Field(1.0, gt=0, le=1)
    sample_size: int | None = Field(None, gt=0)


class LocalBackend(Section):
    type: Literal["local"] = "local"
    cache_dir: str | None = Field(None, description="Where preprocessed data and embeddings are cached.")


class Config(Section):
    model_type: Literal["ecd"] = "ecd"
    input_features: list[InputFeature] = Field(min_length=1)
    output_features: list[OutputFeature] = Field(min_length=1)
    combiner: ConcatCombiner = ConcatCombiner()
    trainer: Trainer = Trainer()
    preprocessing: Preprocessing = Preprocessing()
    backend: LocalBackend = LocalBackend()

    @model_validator(mode="after")
    def _names_unique_and_fields_known(self):
        names = [f.name for f in (*self.input_features, *self.output_features)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"feature names must be unique; repeated: {', '.join(duplicates)}")
        outputs = [f.name for f in self.output_features]
        field = self.trainer.validation_field
        if field != "combined" and field not in outputs:
            raise ValueError(f"trainer.validation_field '{field}' is neither 'combined' nor an output feature ({', '.join(outputs)})")
        return self

    def input(self, name: str):
        return next(f for f in self.input_features if f.name == name)

    def output(self, name: str):
        return next(f for f in self.output_features if f.name == name)
