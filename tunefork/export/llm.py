"""`export --format hf` of a `model_type: llm` model: the folder plain `AutoModelForCausalLM.from_pretrained` loads.

Full safetensors weights (an adapter merged in with `--merge-adapter`), the tokenizer and a `generation_config.json`
with the config's generation settings, checked by next-token logits on probe prompts before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from tunefork.export.common import PROBES, ExportError


def write(model, config, meta, tokenizer, folder: Path, merge_adapter: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from tunefork.adapters import wrapper as adapters
    from tunefork.models import llm

    if adapters.is_peft(model) and not merge_adapter:
        raise ExportError("this model is a base model plus an adapter: --merge-adapter writes full weights that "
                          "AutoModelForCausalLM loads (the adapter alone is already in model/adapter, in peft's format)")
    batch = tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.inference_mode():
        reference = llm.logits(model.eval(), batch)
        plain = llm.merge(model).eval()
        kwargs = config.generation.kwargs()
        eos = kwargs.pop("eos_token_id", tokenizer.eos_token_id)  # generation.eos_token_id, else the tokenizer's
        plain.generation_config = GenerationConfig(**{k: v for k, v in kwargs.items() if v is not None},
                                                   pad_token_id=meta["pad_token_id"], eos_token_id=eos)
        llm.save_full(plain, folder)
        tokenizer.save_pretrained(folder)
        reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        real = batch["attention_mask"].bool()  # padded positions attend to nothing: not part of the comparison
        difference = float((llm.logits(reloaded, batch) - reference)[real].abs().max())
    if difference > 1e-3:  # merging adds the low-rank product into fp32 weights: rounding, nothing more
        raise ExportError(f"the exported model's logits differ from tunefork's by {difference:.2e}; nothing was written")
