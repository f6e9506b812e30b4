"""Prompt tuning (Lester et al. 2021, https://arxiv.org/abs/2104.08691), through `peft.PromptTuningConfig`.

`num_virtual_tokens` learned embedding vectors are put in front of every input; the transformer itself is untouched
and only those vectors train. The encoder pools over the real tokens only (the virtual ones are sliced off its
output), except `cls_pooled`, whose pooler reads the first position — now a learned token. Nothing is merged: the
prompt is extra input, not a weight delta. Ludwig ships this method disabled; here it works and is tested.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunefork.adapters.base import AdapterSection


class PromptTuning(AdapterSection):
    type: Literal["prompt_tuning"]
    num_virtual_tokens: int = Field(8, gt=0, description="Learned vectors put in front of every input.")
    prompt_tuning_init: Literal["RANDOM", "TEXT"] = Field(
        "RANDOM", description="'RANDOM': random vectors. 'TEXT': the embeddings of prompt_tuning_init_text's tokens."
    )
    prompt_tuning_init_text: str | None = Field(None, description="The text whose token embeddings start the prompt.")

    peft_type: ClassVar[str] = "PROMPT_TUNING"
    mergeable: ClassVar[bool] = False

    @model_validator(mode="after")
    def _text_for_text_init(self):
        if self.prompt_tuning_init == "TEXT" and not self.prompt_tuning_init_text:
            raise ValueError("prompt_tuning_init 'TEXT' needs prompt_tuning_init_text")
        return self

    def to_peft(self, task_type=None, *, total_steps=None, base_path=None):
        from peft import PromptTuningConfig

        text = self.prompt_tuning_init == "TEXT"
        return PromptTuningConfig(
            num_virtual_tokens=self.num_virtual_tokens,
            prompt_tuning_init=self.prompt_tuning_init,
            prompt_tuning_init_text=self.prompt_tuning_init_text if text else None,
            tokenizer_name_or_path=base_path if text else None,  # TEXT init tokenizes with the base model's tokenizer
            task_type=task_type,
        )

    def training_refusal(self) -> str | None:
        if self.pretrained_adapter_weights:
            return ("pretrained_adapter_weights: peft cannot train a saved prompt-tuning adapter further (it loads "
                    "prompt-learning adapters for inference only); remove it to train a fresh prompt")
        return None
