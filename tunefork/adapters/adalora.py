"""AdaLoRA: adaptive rank budgets (Zhang et al. 2023, https://arxiv.org/abs/2303.10512), through `peft.AdaLoraConfig`.

Each adapted layer's update is kept in SVD form, ΔW = P·Λ·Q with Λ diagonal (`lora_E`), starting at `init_r` singular
values per layer. During training the importance of each singular triplet (smoothed |w · ∂L/∂w| with its
uncertainty, EMAs `beta1` / `beta2`) is measured, and the total budget shrinks on a cubic schedule from
init_r·layers to target_r·layers between step `tinit` and step `total_step - tfinal`, pruning the least important
triplets everywhere — so important layers end with more rank than others. peft does the measuring and pruning in
`update_and_allocate(step)`, which must see each step's gradients: the training loop calls it after the optimizer
step and before the gradients are cleared (`after_optimizer_step`).

An orthogonality penalty keeps P and Q near-orthogonal so Λ stays a meaningful set of singular values. peft adds it
only inside its own forward when the wrapped model returns a loss (`AdaLoraModel.forward`, peft 0.21); our heads
compute the loss outside the transformer, so `penalty` adds the same term to the training objective:
orth_reg_weight · mean over every lora_A / lora_B of ‖A·Aᵀ − I‖_F / ‖Bᵀ·B − I‖_F. The logged training loss is the
task loss alone, like the validation loss.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunefork.adapters.base import AdapterSection
from tunefork.adapters.lora import TARGETS_DESCRIPTION

IMPORTANCE = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # peft RankAllocator's per-parameter statistics


class AdaLora(AdapterSection):
    type: Literal["adalora"]
    init_r: int = Field(12, gt=0, description="Singular values per layer at the start.")
    target_r: int = Field(8, gt=0, description="Average singular values per layer after the budget has shrunk.")
    tinit: int = Field(0, ge=0, description="Steps of warm-up at the full budget before pruning starts.")
    tfinal: int = Field(0, ge=0, description="Final steps that train at the final budget without re-allocating.")
    delta_t: int = Field(1, gt=0, description="Steps between two budget allocations.")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor smoothing the importance (sensitivity).")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor smoothing its uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0, description="Weight of the orthogonality penalty on P and Q.")
    total_step: int | None = Field(
        None, gt=0, description="Steps the budget schedule spans. null: the planned number of optimizer steps "
        "(trainer.train_steps, or steps per epoch × epochs; an early stop ends before the final budget is reached)."
    )
    alpha: int | None = Field(None, gt=0, description="Scale of the update. null: 16 (Ludwig's 2·r with r 8).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the input of the low-rank branch.")
    target_modules: list[str] | None = Field(None, min_length=1, description=TARGETS_DESCRIPTION)
    bias_type: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train too.")

    peft_type: ClassVar[str] = "ADALORA"
    default_targets: ClassVar[str | None] = "TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING"

    @model_validator(mode="after")
    def _budget_shrinks(self):
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r}): the budget only shrinks")
        problem = schedule_problem(self.tinit, self.tfinal, self.total_step) if self.total_step is not None else None
        if problem:
            raise ValueError(problem)
        return self

    def schedule_steps(self, planned_steps: int) -> int:
        return self.total_step or planned_steps

    def to_peft(self, task_type=None, *, total_steps=None, base_path=None):
        from peft import AdaLoraConfig

        return AdaLoraConfig(
            init_r=self.init_r,
            target_r=self.target_r,
            tinit=self.tinit,
            tfinal=self.tfinal,
            deltaT=self.delta_t,
            beta1=self.beta1,
            beta2=self.beta2,
            orth_reg_weight=self.orth_reg_weight,
            total_step=self.schedule_steps(total_steps),
            lora_alpha=self.alpha if self.alpha is not None else 16,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias=self.bias_type,
            task_type=task_type,
        )

    # ------------------------------------------------------------------------------------------ training hooks
    def penalty(self, peft_model):
        """peft's orthogonality regulariser (AdaLoraModel.forward), for a loss computed outside the model. The weight
        is the peft config's: this section's, or a `pretrained_adapter_weights` adapter's own."""
        weight = _peft_config(peft_model).orth_reg_weight
        if not weight:
            return None
        import torch

        tuner = peft_model.base_model
        name = tuner.trainable_adapter_name
        norms = []
        for key, p in tuner.model.named_parameters():
            if ("lora_A" in key or "lora_B" in key) and name in key:
                covariance = p @ p.T if "lora_A" in key else p.T @ p
                eye = torch.eye(*covariance.shape, dtype=covariance.dtype, device=covariance.device)
                norms.append(torch.linalg.matrix_norm(covariance - eye))  # Frobenius, not squared, as peft does
        return weight * torch.stack(norms).mean() if norms else None

    def after_optimizer_step(self, peft_model, step: int) -> None:
        # peft's schedule reaches the target budget at step == total_step - tfinal (its force-mask branch), so
        # steps count from 1: the last planned step allocates the final budget.
        peft_model.base_model.update_and_allocate(step)

    def training_state(self, peft_model):
        # The rank pattern decides which triplets are saved; it must match the weights restored as the best ones.
        return copy.deepcopy(_peft_config(peft_model).rank_pattern)

    def restore_training_state(self, peft_model, state) -> None:
        _peft_config(peft_model).rank_pattern = copy.deepcopy(state)

    def checkpoint_state(self, peft_model):
        # peft's rank allocator smooths each triplet's importance over steps; without these statistics a resumed run
        # would re-allocate ranks from fresh ones and drift from the uninterrupted run.
        allocator = peft_model.base_model.rankallocator
        tensors = {f"{kind}/{name}": value for kind in IMPORTANCE for name, value in getattr(allocator, kind).items()}
        return tensors, self.training_state(peft_model)

    def restore_checkpoint_state(self, peft_model, tensors: dict, state) -> None:
        allocator = peft_model.base_model.rankallocator
        device = next(peft_model.parameters()).device
        for kind in IMPORTANCE:
            setattr(allocator, kind, {})
        for key, value in tensors.items():
            kind, name = key.split("/", 1)
            getattr(allocator, kind)[name] = value.to(device)
        self.restore_training_state(peft_model, state)


def _peft_config(peft_model):
    return peft_model.peft_config[peft_model.base_model.trainable_adapter_name]


def schedule_problem(tinit: int, tfinal: int, total_step: int) -> str | None:
    """Why the budget schedule has no pruning phase (peft refuses it), or None when it has one."""
    if tinit >= total_step - tfinal:
        return (f"tinit ({tinit}) + tfinal ({tfinal}) leave no step to re-allocate the rank budget in {total_step} "
                f"steps; lower them or train longer")
    return None
