"""Parameter-efficient fine-tuning: one small module per PEFT method, each a pydantic section with Ludwig's names and
defaults whose `to_peft()` returns the `peft` config. We wrap peft; no tuner is re-implemented here.

    registry.py  the union of the sections (what `encoder.adapter` accepts)
    wrapper.py   a Hugging Face model + a section → a peft model; save, load, merge, count
    steps.py     what the training loop calls around each optimizer step (AdaLoRA's budget and penalty)

The sections build on `tunefork.sections` and never import `tunefork.config` (which embeds their union).
Importing this package imports pydantic only; torch and peft load inside the functions that use them.
"""

from tunefork.adapters.registry import BY_TYPE, SECTIONS, Adapter

__all__ = ["Adapter", "BY_TYPE", "SECTIONS"]
