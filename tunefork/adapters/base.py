"""What every adapter section shares: Ludwig's `pretrained_adapter_weights` and `postprocessor`, and the checks that
need the model (does each `target_modules` name exist?) so a typo is a one-sentence ConfigError, not a peft trace.

The classes here and in the method modules are plain pydantic: importing them never imports torch or peft.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from tunefork.errors import ConfigError, did_you_mean
from tunefork.sections import Section


class Postprocessor(Section):
    """What happens to the adapter once training ends (Ludwig's `adapter.postprocessor`)."""

    merge_adapter_into_base_model: bool = Field(
        False,
        description="Fold the trained adapter into the base weights after training, so model/ holds full weights "
        "that load without the base model or peft (as large as a full fine-tune). Predictions are unchanged.",
    )
    progressbar: bool = Field(False, description="Show a progress bar while merging.")


class AdapterSection(Section):
    """A PEFT method. With an adapter the base transformer is frozen and only the adapter (and the task heads)
    trains, whatever `encoder.trainable` says."""

    pretrained_adapter_weights: str | None = Field(
        None,
        description="Start from a saved adapter instead of a fresh one: a peft adapter folder (adapter_config.json), "
        "a tunefork model folder or run directory with this feature's adapter, or a hub id. Its shape (rank, target "
        "modules, ...) comes from the saved adapter; its type must match this one.",
    )
    postprocessor: Postprocessor = Postprocessor()

    # The peft PeftType this section builds, to check a saved adapter before loading it.
    peft_type: ClassVar[str]
    # peft's table of default target modules per model type (in peft.utils.constants); None: not a module tuner.
    default_targets: ClassVar[str | None] = None
    # Prompt-style adapters add tokens or attention instead of a weight delta: peft has no merge for them.
    mergeable: ClassVar[bool] = True

    @model_validator(mode="after")
    def _merge_possible(self):
        if self.postprocessor.merge_adapter_into_base_model and not self.mergeable:
            raise ValueError(
                f"{self.type} adapters cannot be merged into the base model (peft has no merge for them: they add "
                f"prompt tokens, not a weight delta); set postprocessor.merge_adapter_into_base_model to false"
            )
        if self.postprocessor.progressbar and not self.postprocessor.merge_adapter_into_base_model:
            raise ValueError("postprocessor.progressbar shows the merge's progress, and this adapter is not merged "
                             "(merge_adapter_into_base_model is false); remove it")
        return self

    def training_refusal(self) -> str | None:
        """Why this section cannot be trained as configured (peft refuses it), or None."""
        return None

    def to_peft(self, task_type: str | None = None, *, total_steps: int | None = None, base_path: str | None = None):
        """The peft config. `total_steps` is the planned number of optimizer steps; `base_path` the base model."""
        raise NotImplementedError

    # ---------------------------------------------------------------- model-dependent checks (need torch + peft)
    def module_lists(self) -> dict[str, list[str]]:
        """The config keys that name modules of the model, with their values (checked against the model)."""
        targets = getattr(self, "target_modules", None)
        return {"target_modules": targets} if targets else {}

    def check(self, model, where: str) -> None:
        """Raise ConfigError when this adapter cannot apply to `model`; `where` is the YAML path of the adapter."""
        names = [name for name, _ in model.named_modules()]
        for key, wanted in self.module_lists().items():
            for target in wanted:
                if not any(name == target or name.endswith("." + target) for name in names):
                    have = adaptable_module_names(model)
                    raise ConfigError([
                        f"{where}.{key}: '{target}' matches no module of this {model.config.model_type} model"
                        f"{did_you_mean(target, have)}; its module names are: {', '.join(have)}"
                    ])
        if self.default_targets and not self.module_lists().get("target_modules"):
            from peft.utils import constants

            if model.config.model_type not in getattr(constants, self.default_targets):
                raise ConfigError([
                    f"{where}.target_modules: peft has no default for {model.config.model_type} models; name the "
                    f"layers to adapt, some of: {', '.join(adaptable_module_names(model))}"
                ])

    # ------------------------------------------------------------- training hooks (AdaLoRA uses them; others: none)
    def penalty(self, peft_model) -> Any:
        """An extra loss term the method needs during training, or None."""
        return None

    def after_optimizer_step(self, peft_model, step: int) -> None:
        """Called after each optimizer step, before the gradients are cleared (step counts from 1)."""

    def training_state(self, peft_model) -> Any:
        """State outside the parameters that must travel with the best weights (AdaLoRA's rank pattern)."""
        return None

    def restore_training_state(self, peft_model, state: Any) -> None:
        """Put back what `training_state` returned."""

    def checkpoint_state(self, peft_model) -> tuple[dict, Any]:
        """What a resumed run needs beyond the parameters and the optimizer to continue exactly: (tensors by name,
        plain JSON state). By default the state that travels with the best weights, and no tensors."""
        return {}, self.training_state(peft_model)

    def restore_checkpoint_state(self, peft_model, tensors: dict, state: Any) -> None:
        """Put back what `checkpoint_state` returned."""
        self.restore_training_state(peft_model, state)


def adaptable_module_names(model) -> list[str]:
    """The distinct last name segments of the layers peft can adapt (linear, embedding, conv): what to write in
    `target_modules`."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    kinds = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, Conv1D)
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and isinstance(module, kinds)})
