"""LoKr: low-rank Kronecker product (KronA, Edalati et al. 2022, https://arxiv.org/abs/2212.10650; as in LyCORIS),
through `peft.LoKrConfig`.

The update is a Kronecker product, ΔW = W₁ ⊗ (B₂·A₂) · α/r, with a small full block W₁ and a low-rank block: a
Kronecker product of an (a × b) and a (c × d) matrix fills a (ac × bd) weight with far fewer numbers than LoRA for the
same rank. peft supports it on Linear and Conv layers (not GPT-2's Conv1D); it merges into the weights.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tunefork.adapters.base import AdapterSection
from tunefork.adapters.lora import TARGETS_DESCRIPTION


class LoKr(AdapterSection):
    type: Literal["lokr"]
    r: int = Field(8, gt=0, description="Rank of the low-rank Kronecker factor.")
    alpha: float = Field(8.0, gt=0, description="α in the scale α/r.")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)

    peft_type: ClassVar[str] = "LOKR"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING"

    def to_peft(self, task_type=None, *, total_steps=None, base_path=None):
        from peft import LoKrConfig

        return LoKrConfig(r=self.r, alpha=self.alpha, target_modules=self.target_modules, task_type=task_type)
