"""LoHa: low-rank Hadamard product (Hyeon-Woo et al. 2022, FedPara, https://arxiv.org/abs/2108.06098; as in LyCORIS),
through `peft.LoHaConfig`.

The update is the element-wise product of two low-rank matrices, ΔW = (B₁·A₁) ⊙ (B₂·A₂) · α/r: its rank can reach r²
while training 2·r·(d + k) numbers, so it expresses more than LoRA at the same rank. peft supports it on Linear and
Conv layers (not GPT-2's Conv1D); it merges into the weights.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tunefork.adapters.base import AdapterSection
from tunefork.adapters.lora import TARGETS_DESCRIPTION


class LoHa(AdapterSection):
    type: Literal["loha"]
    r: int = Field(8, gt=0, description="Rank of each of the two factors.")
    alpha: float = Field(8.0, gt=0, description="α in the scale α/r.")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)

    peft_type: ClassVar[str] = "LOHA"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING"

    def to_peft(self, task_type=None, *, total_steps=None, base_path=None):
        from peft import LoHaConfig

        return LoHaConfig(r=self.r, alpha=self.alpha, target_modules=self.target_modules, task_type=task_type)
