"""Parameter-efficient fine-tuning: one small module per PEFT method, each a pydantic section with Ludwig's names and
defaults whose `to_peft()` returns the `peft` config. We wrap peft; no tuner is re-implemented here.

    registry.py  the union of the sections (what `encoder.adapter` accepts)
    wrapper.py   a Hugging Face model + a section → a peft model; save, load, merge, count
    steps.py     what the training loop calls around each optimizer step (AdaLoRA's budget and penalty)

Importing this package imports pydantic only; torch and peft load inside the functions that use them.
"""

# The sections subclass tunefork.config's Section while the config schema embeds their union, so the config package
# must finish importing first whichever side is imported first (otherwise: a circular partial import).
import tunefork.config  # noqa: F401  isort: skip
from tunefork.adapters.registry import BY_TYPE, SECTIONS, Adapter

__all__ = ["Adapter", "BY_TYPE", "SECTIONS"]
