"""Adaption prompts: LLaMA-Adapter (Zhang et al. 2023, https://arxiv.org/abs/2303.16199), via `peft.AdaptionPromptConfig`.

The top `adapter_layers` attention layers get `adapter_len` learned prompt vectors that every token also attends to;
that extra attention output is multiplied by a gate initialised to zero, so training starts exactly at the base
model (and on the first step only the gates receive a gradient — the prompts start moving once a gate is non-zero).
peft implements it by wrapping the attention modules of specific architectures, listed in its
`TRANSFORMERS_MODEL_CONFIG` (llama, mistral and gpt2 in peft 0.21); any other model is refused by name. The prompts
are extra attention, not a weight delta, so there is nothing to merge into the base weights.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tunefork.adapters.base import AdapterSection
from tunefork.errors import ConfigError


def supported_model_types() -> list[str]:
    """The architectures peft can wrap, read from peft itself so a newer peft widens the list without our help."""
    from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

    return sorted(TRANSFORMERS_MODEL_CONFIG)


class AdaptionPrompt(AdapterSection):
    type: Literal["adaption_prompt"]
    adapter_len: int = Field(4, gt=0, description="Learned prompt vectors per adapted layer.")
    adapter_layers: int = Field(1, gt=0, description="How many attention layers, counted from the top, get prompts.")

    peft_type: ClassVar[str] = "ADAPTION_PROMPT"
    mergeable: ClassVar[bool] = False

    def check(self, model, where: str) -> None:
        supported = supported_model_types()
        kind = model.config.model_type
        if kind not in supported:
            raise ConfigError([
                f"{where}.type: adaption_prompt works only on the architectures peft supports for it "
                f"({', '.join(supported)}); this model is '{kind}'"
            ])
        layers = getattr(model.config, "num_hidden_layers", None)
        if layers is not None and self.adapter_layers > layers:
            raise ConfigError([f"{where}.adapter_layers: {self.adapter_layers} is more than the model's {layers} layers"])

    def to_peft(self, task_type=None, *, total_steps=None, base_path=None):
        from peft import AdaptionPromptConfig

        return AdaptionPromptConfig(adapter_len=self.adapter_len, adapter_layers=self.adapter_layers, task_type=task_type)
