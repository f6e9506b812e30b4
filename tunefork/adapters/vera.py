"""VeRA: Vector-based Random Matrix Adaptation (Kopiczko et al. 2024, https://arxiv.org/abs/2310.11454), through
`peft.VeraConfig`.

One pair of random matrices A (r × k) and B (d × r) is drawn once from `projection_prng_key`, frozen, and shared by
every adapted layer; each layer trains only two scaling vectors, ΔW = Λ_b · B · Λ_d · A (Λ diagonal, b starting at
zero so training starts at the base model). That is d + r numbers per layer — about ten times fewer than LoRA — which
is why its rank defaults to 256. peft saves the shared matrices with the adapter, so reloading does not depend on
the random generator; it merges into the weights.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tunefork.adapters.base import AdapterSection
from tunefork.adapters.lora import TARGETS_DESCRIPTION


class Vera(AdapterSection):
    type: Literal["vera"]
    r: int = Field(256, gt=0, description="Rank of the shared random matrices.")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)
    projection_prng_key: int = Field(0, ge=0, description="Seed of the shared random matrices.")

    peft_type: ClassVar[str] = "VERA"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING"

    def to_peft(self, task_type=None, *, total_steps=None, base_path=None):
        from peft import VeraConfig

        return VeraConfig(r=self.r, target_modules=self.target_modules, projection_prng_key=self.projection_prng_key,
                          task_type=task_type)
