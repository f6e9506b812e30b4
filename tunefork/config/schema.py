"""The whole config: what `config.load` returns. Frozen; derived values live in `plan.resolve`, not here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunefork.config.backend import Backend, LocalBackend
from tunefork.config.features import InputFeature, OutputFeature, is_transformer
from tunefork.config.hyperopt import Hyperopt
from tunefork.config.layers import Activation, FCLayer, FCStack
from tunefork.config.trainer import Trainer
from tunefork.sections import Section, tagged


class ConcatCombiner(FCStack):
    """Concatenates every input's vector, then optional fully connected layers."""

    type: Literal["concat"] = "concat"
    num_fc_layers: int = Field(0, ge=0)
    output_size: int = Field(256, gt=0)
    fc_layers: list[FCLayer] | None = Field(None, description="Explicit layers; overrides num_fc_layers.")
    dropout: float = Field(0.0, ge=0, lt=1)
    activation: Activation = "relu"


class ComparatorCombiner(FCStack):
    """Compares two groups of inputs (`entity_1`, `entity_2`): [e1, e2, e1·e2, |e1 − e2|], then the decoders."""

    type: Literal["comparator"]
    entity_1: list[str] = Field(min_length=1, description="Input feature names of the first entity.")
    entity_2: list[str] = Field(min_length=1, description="Input feature names of the second entity.")
    num_fc_layers: int = Field(1, ge=1, description="Layers projecting each entity before the comparison.")
    output_size: int = Field(256, gt=0)
    fc_layers: list[FCLayer] | None = Field(None, description="Explicit layers; overrides num_fc_layers.")
    dropout: float = Field(0.0, ge=0, lt=1)
    activation: Activation = "relu"


Combiner = tagged(ConcatCombiner, ComparatorCombiner, default="concat")


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


class Config(Section):
    model_type: Literal["ecd"] = "ecd"
    input_features: list[InputFeature] = Field(min_length=1)
    output_features: list[OutputFeature] = Field(min_length=1)
    combiner: Combiner = ConcatCombiner()
    trainer: Trainer = Trainer()
    preprocessing: Preprocessing = Preprocessing()
    backend: Backend = LocalBackend()  # or a Ray cluster: tunefork/config/backend.py
    hyperopt: Hyperopt | None = None  # read by `tunefork hyperopt` only: tunefork/config/hyperopt.py

    @model_validator(mode="after")
    def _names_unique_and_fields_known(self):
        names = [f.name for f in (*self.input_features, *self.output_features)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"feature names must be unique; repeated: {', '.join(duplicates)} (rename one, and "
                             "point its `column` at the data's column)")
        inputs = [f.name for f in self.input_features]
        for feature in self.input_features:
            tied = feature.tied
            if tied is not None and (tied == feature.name or tied not in inputs or self.input(tied).type != feature.type
                                     or self.input(tied).tied is not None):
                raise ValueError(f"input feature '{feature.name}': tied must name another {feature.type} input that is not tied itself, got '{tied}'")
            if tied is not None and self.input(tied).encoder.type in ("passthrough", "onehot"):
                raise ValueError(f"input feature '{feature.name}': tied shares encoder weights, and '{tied}' has a "
                                 f"{self.input(tied).encoder.type} encoder, which has none; remove tied")
        if self.combiner.type == "comparator":
            named = [*self.combiner.entity_1, *self.combiner.entity_2]
            unknown = sorted(set(named) - set(inputs))
            if unknown or len(set(named)) != len(named) or set(named) != set(inputs):
                raise ValueError(f"combiner.entity_1 and entity_2 must split the input features ({', '.join(inputs)}) between them, "
                                 f"each once; got {self.combiner.entity_1} and {self.combiner.entity_2}")
        if self.trainer.enable_gradient_checkpointing:
            self._a_transformer_trains()
        outputs = [f.name for f in self.output_features]
        field = self.trainer.validation_field
        if field != "combined" and field not in outputs:
            raise ValueError(f"trainer.validation_field '{field}' is neither 'combined' nor an output feature ({', '.join(outputs)})")
        return self

    def _a_transformer_trains(self) -> None:
        """Checkpointing recomputes a trained transformer's activations in backward; a frozen encoder runs in
        inference mode and keeps none (a tied input runs its target's encoder, so its own is not looked at)."""
        texts = [f for f in self.input_features if is_transformer(f) and f.tied is None]
        if any(not f.encoder.frozen for f in texts):
            return
        why = (f"text input{'s' if len(texts) > 1 else ''} {', '.join(f.name for f in texts)} "
               f"{'are' if len(texts) > 1 else 'is'} frozen: trainable false and no adapter") if texts else "no text input"
        raise ValueError(f"trainer.enable_gradient_checkpointing: no transformer trains in this config ({why}), "
                         f"so there is nothing to recompute; remove it")

    def input(self, name: str):
        return next(f for f in self.input_features if f.name == name)

    def columns(self) -> list[str]:
        """Dataset columns the inputs read, in feature order (as `LLMConfig.columns` for a prompt)."""
        return [f.source for f in self.input_features]

    def output(self, name: str):
        return next(f for f in self.output_features if f.name == name)
