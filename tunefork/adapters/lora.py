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
from tunefork.sections import Section

TARGETS_DESCRIPTION = (
    "Names of the layers to adapt: a name matches a module whose dotted path equals it or ends with '.name' "
    "(e.g. [query, value] for BERT, [q_proj, v_proj] for Llama). null: peft's default for the architecture."
)


class LoftQ(Section):
    loftq_bits: Literal[4] = Field(4, description="Bits of the quantized base (bitsandbytes' 4-bit NF4).")
    loftq_iter: int = Field(1, gt=0, description="Alternating quantize / low-rank steps per layer.")


class Eva(Section):
    rho: float = Field(2.0, ge=1, description="How far ranks may move between layers: a layer gets at most rho·r.")
    tau: float = Field(0.99, gt=0, le=1, description="Stop reading batches once the singular vectors are this "
                       "similar (cosine) between batches.")
    use_label_mask: bool = Field(True, description="Read only the positions with a label (the output tokens).")
    whiten: bool = Field(False, description="Whiten the singular vectors.")
    adjust_scaling_factors: bool = Field(True, description="Adjust α so a layer's scale stays α/r at its new rank.")


class Corda(Section):
    corda_method: Literal["ipm", "kpm"] = Field(
        "ipm", description="'ipm': instruction-previewed (adapt the directions the data uses most); 'kpm': "
        "knowledge-preserving (adapt the ones it uses least).")


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
    init_lora_weights: Literal["default", "gaussian", "orthogonal", "pissa", "olora", "corda", "eva", "loftq"] = Field(
        "default",
        description="'default': A Kaiming-uniform, B zero (starts at the base model). 'gaussian': A Gaussian, B zero. "
        "'orthogonal': A and B from one orthogonal matrix (needs an even r). 'pissa' / 'olora': from the SVD / QR of "
        "the base weights. 'corda' / 'eva': from the layers' inputs on training batches (model_type llm). 'loftq': "
        "A and B make up for the error of NF4-quantizing the base weights, which are replaced by their quantized "
        "approximation (peft's bitsandbytes routine: needs a CUDA GPU). See tunefork/adapters/lora_init.py.",
    )
    rank_pattern: dict[str, int] | None = Field(
        None, description="Per-layer ranks overriding r: a layer name (or regular expression) → rank, e.g. "
        "{q_proj: 16}.")
    alpha_pattern: dict[str, float] | None = Field(
        None, description="Per-layer α overriding alpha: a layer name (or regular expression) → α.")
    loftq_config: LoftQ | None = Field(None, description="Settings of init_lora_weights: loftq.")
    eva_config: Eva | None = Field(None, description="Settings of init_lora_weights: eva.")
    corda_config: Corda | None = Field(None, description="Settings of init_lora_weights: corda.")

    peft_type: ClassVar[str] = "LORA"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"

    @model_validator(mode="after")
    def _even_rank_for_orthogonal(self):
        if self.init_lora_weights == "orthogonal" and self.r % 2:
            raise ValueError(f"init_lora_weights 'orthogonal' needs an even r, got r {self.r}")
        for init in ("loftq", "eva", "corda"):
            if getattr(self, f"{init}_config") is not None and self.init_lora_weights != init:
                raise ValueError(f"{init}_config sets up init_lora_weights: {init}, and init_lora_weights is "
                                 f"'{self.init_lora_weights}'; set init_lora_weights: {init} or remove {init}_config")
        return self

    def check(self, model, where: str) -> None:
        super().check(model, where)
        if self.init == "loftq":
            from tunefork.adapters.lora_init import loftq_problem
            from tunefork.errors import ConfigError

            problem = loftq_problem(model)
            if problem:
                raise ConfigError([f"{where}.init_lora_weights: loftq {problem}"])

    @property
    def init(self) -> str:
        return self.init_lora_weights

    @property
    def scale_numerator(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r

    def to_peft(self, task_type=None, *, total_steps=None, base_path=None):
        from peft import EvaConfig, LoftQConfig, LoraConfig
        from peft.tuners.lora.config import CordaConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.scale_numerator,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias=self.bias_type,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            init_lora_weights=True if self.init == "default" else self.init,
            rank_pattern=dict(self.rank_pattern or {}),
            alpha_pattern=dict(self.alpha_pattern or {}),
            eva_config=EvaConfig(**(self.eva_config or Eva()).model_dump()) if self.init == "eva" else None,
            loftq_config=LoftQConfig(**(self.loftq_config or LoftQ()).model_dump()) if self.init == "loftq" else {},
            corda_config=CordaConfig(**(self.corda_config or Corda()).model_dump()) if self.init == "corda" else None,
            task_type=task_type,
        )

