"""(IA)³: Infused Adapter by Inhibiting and Amplifying Inner Activations (Liu et al. 2022,
https://arxiv.org/abs/2205.05638), through `peft.IA3Config`.

Instead of adding a weight update, (IA)³ learns one vector per adapted layer that rescales activations element-wise:
attention keys and values become l_k ⊙ k and l_v ⊙ v, and a feed-forward layer's input becomes l_ff ⊙ x. The vectors
start at ones (`init_ia3_weights`), so training starts at the base model, and a rescaling is a diagonal matrix, so it
merges into the weights exactly. It trains the fewest parameters of the weight-based methods here.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunefork.adapters.base import AdapterSection
from tunefork.errors import ConfigError


class IA3(AdapterSection):
    type: Literal["ia3"]
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Layers whose activations are rescaled. null: peft's default for the architecture."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Those of target_modules that are feed-forward layers: their input is rescaled instead of "
        "their output. null: peft's default for the architecture.",
    )
    fan_in_fan_out: bool = Field(
        False, description="The layers store weights as (fan_in, fan_out), like GPT-2's Conv1D (peft corrects it).",
    )
    modules_to_save: list[str] | None = Field(
        None, description="Other modules of the transformer to train in full and save with the adapter.",
    )
    init_ia3_weights: bool = Field(True, description="Start the vectors at ones (the base model); false: random.")

    peft_type: ClassVar[str] = "IA3"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING"

    @model_validator(mode="after")
    def _feedforward_within_targets(self):
        if self.feedforward_modules and self.target_modules:
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if extra:
                raise ValueError(f"feedforward_modules must be among target_modules; not there: {', '.join(extra)}")
        return self

    def check(self, model, where: str) -> None:
        super().check(model, where)
        from transformers.pytorch_utils import Conv1D

        if self.fan_in_fan_out and not any(isinstance(m, Conv1D) for m in model.modules()):
            raise ConfigError([f"{where}.fan_in_fan_out: this {model.config.model_type} model has no Conv1D layers "
                               f"(GPT-2's (fan_in, fan_out) weights); its linear layers are read the right way round "
                               f"without it, and peft turns it off for them — remove it"])

    def module_lists(self) -> dict[str, list[str]]:
        named = {"target_modules": self.target_modules, "feedforward_modules": self.feedforward_modules,
                 "modules_to_save": self.modules_to_save}
        return {key: value for key, value in named.items() if value}

    def to_peft(self, task_type=None, *, total_steps=None, base_path=None):
        from peft import IA3Config

        return IA3Config(
            target_modules=self.target_modules,
            feedforward_modules=self.feedforward_modules,
            fan_in_fan_out=self.fan_in_fan_out,
            modules_to_save=self.modules_to_save,
            init_ia3_weights=self.init_ia3_weights,
            task_type=task_type,
        )
