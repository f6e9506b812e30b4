"""Preference tuning of a causal LM (`model_type: llm`, `trainer.type: dpo | orpo | kto`): Ludwig's keys, TRL's
defaults.

    trainer: {type: dpo, beta: 0.1, dpo_loss_type: sigmoid, rejected_column: rejected}

The data is laid out as Ludwig lays it out: the prompt is the input feature (or `prompt.template`), the output
feature's column is the chosen completion, `rejected_column` the rejected one (DPO, ORPO). KTO takes one completion
per row (the output feature) and `label_column`, true where that completion is desirable.

Each type has only its own keys, so a key of another type is refused with a did-you-mean. Ludwig's example configs
write a plain `beta`; it sets the type's own beta (`dpo_beta`, `orpo_beta`, `kto_beta`), and both given with
different values is an error. Defaults are TRL's (beta 0.1, learning rate 1e-6), epochs Ludwig's LLM 3.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunefork.config.trainer import Trainer

PREFERENCE_TYPES = ("dpo", "orpo", "kto")
DEFAULT_BETA = 0.1  # TRL's DPOConfig, ORPOConfig and KTOConfig
# What an evaluation reports, under TRL's names. rewards/accuracies is not defined for KTO's unpaired rows.
PAIRED_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                  "logps/chosen", "logps/rejected")
METRICS = {"dpo": PAIRED_METRICS, "orpo": (*PAIRED_METRICS, "nll_loss", "log_odds_ratio"),
           "kto": ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                   "kl")}


class PreferenceTrainer(Trainer):
    """What DPO, ORPO and KTO share: the step loop's keys (as `finetune`), Ludwig's plain `beta`."""

    epochs: int = Field(3, gt=0)
    learning_rate: float = Field(1e-6, gt=0, description="TRL's default for preference tuning (1e-6); LoRA "
                                 "usually takes a larger one, e.g. 5e-5.")
    validation_metric: Literal["loss", "rewards/accuracies", "rewards/margins"] = Field(
        "loss", description="loss, or rewards/accuracies or rewards/margins (higher is better).")
    beta: float | None = Field(None, gt=0, description="Ludwig's plain beta: the type's own beta (dpo_beta, "
                               "orpo_beta, kto_beta).")

    @property
    def own_beta(self) -> str:
        return f"{self.type}_beta"

    @property
    def strength(self) -> float:
        """The beta this run uses: the type's own key, else the plain `beta`, else TRL's 0.1."""
        own = getattr(self, self.own_beta)
        return own if own is not None else (self.beta if self.beta is not None else DEFAULT_BETA)

    @model_validator(mode="after")
    def _one_beta(self):
        own = getattr(self, self.own_beta)
        if self.beta is not None and own is not None and own != self.beta:
            raise ValueError(f"beta {self.beta} and {self.own_beta} {own} disagree; give one of them")
        return self


class DPOTrainer(PreferenceTrainer):
    """Direct Preference Optimization (Rafailov et al., 2023) against the frozen base model."""

    type: Literal["dpo"]
    dpo_beta: float | None = Field(None, gt=0, description="How far the model may move from the reference (0.1).")
    dpo_loss_type: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="sigmoid: DPO's loss; ipo: IPO's squared loss on per-token log-ratios (TRL's form).")
    dpo_label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="cDPO: the probability that a pair's preference is flipped (sigmoid only).")
    rejected_column: str = Field("rejected", min_length=1, description="Column of the rejected completion.")

    @model_validator(mode="after")
    def _smoothing_is_sigmoid(self):
        if self.dpo_label_smoothing and self.dpo_loss_type != "sigmoid":
            raise ValueError(f"dpo_label_smoothing applies to dpo_loss_type sigmoid, not {self.dpo_loss_type}; "
                             f"remove it")
        return self


class ORPOTrainer(PreferenceTrainer):
    """Odds Ratio Preference Optimization (Hong et al., 2024): no reference model, SFT and preference in one loss."""

    type: Literal["orpo"]
    orpo_beta: float | None = Field(None, gt=0, description="Weight of the odds-ratio term (TRL's beta, 0.1).")
    rejected_column: str = Field("rejected", min_length=1, description="Column of the rejected completion.")


class KTOTrainer(PreferenceTrainer):
    """Kahneman-Tversky Optimization (Ethayarajh et al., 2024): unpaired completions labelled desirable or not."""

    type: Literal["kto"]
    validation_metric: Literal["loss", "rewards/margins"] = "loss"
    kto_beta: float | None = Field(None, gt=0, description="How far the model may move from the reference (0.1).")
    kto_desirable_weight: float = Field(1.0, gt=0, description="Weight of the desirable rows' losses.")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="Weight of the undesirable rows' losses.")
    label_column: str = Field("label", min_length=1,
                              description="Boolean column: true where the row's completion is desirable.")


PREFERENCE_TRAINERS = (DPOTrainer, ORPOTrainer, KTOTrainer)
