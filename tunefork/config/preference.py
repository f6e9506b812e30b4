"""Preference tuning of a causal LM (`model_type: llm`, `trainer.type: dpo | orpo | kto`): Ludwig's keys, TRL's
meaning.

    trainer: {type: dpo, beta: 0.1, dpo_loss_type: sigmoid, rejected_column: rejected}

The data is laid out as Ludwig lays it out: the prompt is the input feature (or `prompt.template`), the output
feature's column is the chosen completion, `rejected_column` the rejected one (DPO, ORPO). KTO takes one completion
per row (the output feature) and `label_column`, true where that completion is desirable.

The keys sit flat in the `trainer` section, as in Ludwig, beside the step loop's keys, whose defaults stay Ludwig's
LLM defaults. A key of another type than `trainer.type`, set off its default, is refused, naming the type it belongs
to.
Ludwig's example configs write a plain `beta`: it sets the type's own beta (`dpo_beta`, `orpo_beta`, `kto_beta`), and
both given with different values is an error. An unset beta is TRL's 0.1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunefork.sections import Section

PREFERENCE_TYPES = ("dpo", "orpo", "kto")
DEFAULT_BETA = 0.1  # TRL's DPOConfig, ORPOConfig and KTOConfig
# What an evaluation reports, under TRL's names. rewards/accuracies is not defined for KTO's unpaired rows.
PAIRED_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                  "logps/chosen", "logps/rejected")
METRICS = {"dpo": PAIRED_METRICS, "orpo": (*PAIRED_METRICS, "nll_loss", "log_odds_ratio"),
           "kto": ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                   "kl")}
OWNERS = {"beta": PREFERENCE_TYPES, "dpo_beta": ("dpo",), "dpo_loss_type": ("dpo",), "dpo_label_smoothing": ("dpo",),
          "orpo_beta": ("orpo",), "kto_beta": ("kto",), "kto_desirable_weight": ("kto",),
          "kto_undesirable_weight": ("kto",), "rejected_column": ("dpo", "orpo"), "label_column": ("kto",)}


class PreferenceKeys(Section):
    """The `trainer` keys of DPO, ORPO and KTO (mixed into the LLM trainer section)."""

    beta: float | None = Field(None, gt=0, description="Ludwig's plain beta: the type's own beta (dpo_beta, "
                               "orpo_beta, kto_beta).")
    dpo_beta: float | None = Field(None, gt=0, description="DPO: how far the model may move from the reference (0.1).")
    dpo_loss_type: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="DPO's loss; ipo: IPO's squared loss on per-token log-ratios (TRL's form).")
    dpo_label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="cDPO: the probability that a pair's preference is flipped (sigmoid only).")
    orpo_beta: float | None = Field(None, gt=0, description="ORPO: weight of the odds-ratio term (0.1).")
    kto_beta: float | None = Field(None, gt=0, description="KTO: how far the model may move from the reference (0.1).")
    kto_desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the desirable rows' losses.")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the undesirable rows' losses.")
    rejected_column: str = Field("rejected", min_length=1, description="DPO, ORPO: the rejected completion's column.")
    label_column: str = Field("label", min_length=1,
                              description="KTO: boolean column, true where the row's completion is desirable.")

    @property
    def strength(self) -> float:
        """The beta this run uses: the type's own key, else the plain `beta`, else TRL's 0.1."""
        own = getattr(self, f"{self.type}_beta", None)
        return own if own is not None else (self.beta if self.beta is not None else DEFAULT_BETA)

    @property
    def reported_metrics(self) -> tuple[str, ...]:
        """What an evaluation reports: loss and perplexity (the generation metrics are `evaluate`'s), or TRL's."""
        return METRICS.get(self.type, ("loss", "perplexity"))

    def reference_model(self, adapter) -> tuple[str, str]:
        """What DPO and KTO compare the model with, and what holding it costs: the plan's decision and reason."""
        if adapter is not None and adapter.pretrained_adapter_weights:
            return ("the adapter as loaded (a frozen copy)", "adapter.pretrained_adapter_weights: the run is compared "
                    "with where it starts, as TRL does; the copy is an adapter's size")
        if adapter is not None:
            return "the base model (adapter disabled)", "the adapter is switched off for the reference: no second copy"
        return "a frozen copy of the base model", "no adapter: every weight trains, so the base is held twice in memory"

    @model_validator(mode="after")
    def _keys_of_the_type(self):
        for key in sorted(OWNERS):  # off its default (a saved config writes every key at its default)
            if self.type not in OWNERS[key] and getattr(self, key) != type(self).model_fields[key].default:
                owners = " or ".join(OWNERS[key])
                raise ValueError(f"{key} applies to trainer.type {owners}, not {self.type}; remove it")
        own = getattr(self, f"{self.type}_beta", None)
        if self.beta is not None and own is not None and own != self.beta:
            raise ValueError(f"beta {self.beta} and {self.type}_beta {own} disagree; give one of them")
        if self.dpo_label_smoothing and self.dpo_loss_type != "sigmoid":
            raise ValueError(f"dpo_label_smoothing applies to dpo_loss_type sigmoid, not {self.dpo_loss_type}; "
                             f"remove it")
        return self
