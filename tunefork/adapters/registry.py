"""The registry: every adapter section, one discriminated union on `type` (with Ludwig's `adapter: lora` shorthand)."""

from __future__ import annotations

from tunefork.adapters.adalora import AdaLora
from tunefork.adapters.adaption_prompt import AdaptionPrompt
from tunefork.adapters.ia3 import IA3
from tunefork.adapters.loha import LoHa
from tunefork.adapters.lokr import LoKr
from tunefork.adapters.lora import Lora
from tunefork.adapters.methods import SECTIONS as NEWER_METHODS
from tunefork.adapters.prompt_tuning import PromptTuning
from tunefork.adapters.vera import Vera
from tunefork.sections import tagged

SECTIONS = (Lora, AdaLora, AdaptionPrompt, IA3, LoHa, LoKr, Vera, PromptTuning, *NEWER_METHODS)
Adapter = tagged(*SECTIONS, nullable=True)  # `adapter: null` (what a saved config holds) means no adapter
BY_TYPE = {section.model_fields["type"].annotation.__args__[0]: section for section in SECTIONS}
BY_PEFT_TYPE = {section.peft_type: section for section in SECTIONS}
