"""Ludwig's multi-adapter form for `model_type: llm`: several named peft adapters on one base model, one active.

    adapters:
      adapters: {coding: {type: lora, r: 16}, chat: {type: lora, pretrained_adapter_weights: results/chat/...}}
      active: coding

The active adapter is also the config's `adapter` (config/llm.py makes it so), so everything said of `adapter`
applies to it; models/llm.py attaches it under its name and loads the others with peft's `load_adapter`.
"""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from tunefork.adapters.lora_init import ALTERS_BASE, REWRITES_BASE
from tunefork.adapters.registry import Adapter
from tunefork.sections import Section


class NamedAdapters(Section):
    """Ludwig's `adapters:`: several named peft adapters on one base model, one of them active. The active adapter is
    the one that trains (fresh, or from its pretrained_adapter_weights) and predicts; every other one is a trained
    adapter loaded from its pretrained_adapter_weights and saved with the model, ready to be made active."""

    adapters: dict[str, Adapter] = Field(min_length=1, description="name → adapter section.")
    active: str = Field(description="The adapter that trains and predicts.")

    @model_validator(mode="before")
    @classmethod
    def _no_merge(cls, data):
        if isinstance(data, dict) and "merge" in data:
            raise ValueError("merge: combining adapters (peft's add_weighted_adapter) is not done here; remove merge "
                             "and set active to the adapter to use")
        return data

    @model_validator(mode="after")
    def _consistent(self):
        names = list(self.adapters)
        if self.active not in self.adapters:
            raise ValueError(f"active '{self.active}' is not one of the adapters ({', '.join(names)})")
        for name, adapter in self.adapters.items():
            if adapter is None:
                raise ValueError(f"adapters.{name}: expected an adapter section, got null")
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
                raise ValueError(f"adapters.{name}: an adapter name is a folder name; use letters, digits, _ . -")
            if name != self.active and not adapter.pretrained_adapter_weights:
                raise ValueError(f"adapters.{name} would stay at its initial weights: only the active adapter "
                                 f"({self.active}) trains; give {name} pretrained_adapter_weights, or remove it")
            if len(names) > 1 and getattr(adapter, "init", None) in (*REWRITES_BASE, *ALTERS_BASE):
                raise ValueError(f"adapters.{name}: init_lora_weights {adapter.init} rewrites the base weights the "
                                 f"other adapters were trained on; train it alone (adapter:), or use the default init")
        return self
