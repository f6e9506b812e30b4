"""LoRA: Low-Rank Adaptation (Hu et al. 2021, https://arxiv.org/abs/2106.09685), through `peft.LoraConfig`.

A frozen weight W0 (d × k) gets a trained low-rank update; for a layer input x

    h = W0·x + (α / r) · B·A·x        A ∈ R^{r×k} (Kaiming-uniform init), B ∈ R^{d×r} (zero init)

so training starts exactly at the pretrained model and only r·(d + k) numbers per layer train. After training
W0 + (α/r)·B·A is one matrix again (`merge_adapter_into_base_model`), so inference costs nothing extra.
Rank-stabilised LoRA (Kalajdzievski 2023, https://arxiv.org/abs/2312.03732) scales by α/√r instead, which keeps the
update's size stable as r grows; DoRA (Liu et al. 2024, https://arxiv.org/abs/2402.09353) splits W into a magnitude
vector and a direction and applies LoRA to the direction only.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunefork.adapters.base import AdapterSection

TARGETS_DESCRIPTION = (
    "Names of the layers to adapt: a name matches a module whose dotted path equals it or ends with '.name' "
    "(e.g. [query, value] for BERT, [q_proj, v_proj] for Llama). null: peft's default for the architecture."
)


class Lora(AdapterSection):
    type: Literal["lora"]
    r: int = Field(8, gt=0, description="Rank of the update B·A.")
    alpha: int | None = Field(
        None, gt=0, description="α in the scale α/r (α/√r with use_rslora). null: 2·r, Ludwig's default."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the input of the low-rank branch.")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)
    bias_type: Literal["none", "all", "lora_only"] = Field(
        "none",
        description="Which biases train too: 'all' trains every bias of the base model, 'lora_only' those of the "
        "adapted layers. They are saved with the adapter.",
    )
    use_rslora: bool = Field(False, description="Scale by α/√r (rank-stabilised LoRA) instead of α/r.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA: a trained magnitude per output plus LoRA.")
    # Only initialisations that leave the base weights untouched: the saved adapter is applied to the pretrained
    # base at load time, so methods that rewrite W0 (pissa, olora, corda, loftq) or need data (eva) would not
    # reload to the same model.
    init_lora_weights: Literal["default", "gaussian", "orthogonal"] = Field(
        "default",
        description="'default': A Kaiming-uniform, B zero (starts at the base model). 'gaussian': A Gaussian, B zero. "
        "'orthogonal': A and B from one orthogonal matrix (needs an even r; does not start at the base model).",
    )

    peft_type: ClassVar[str] = "LORA"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"

    @model_validator(mode="after")
    def _even_rank_for_orthogonal(self):
        if self.init_lora_weights == "orthogonal" and self.r % 2:
            raise ValueError(f"init_lora_weights 'orthogonal' needs an even r, got r {self.r}")
        return self

    @property
    def scale_numerator(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r

    def to_peft(self, task_type=None, *, total_steps=None, base_path=None):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.scale_numerator,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias=self.bias_type,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            init_lora_weights=True if self.init_lora_weights == "default" else self.init_lora_weights,
            task_type=task_type,
        )
