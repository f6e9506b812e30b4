"""LoRA initialisations that start from the base weights or the data, run by peft's own routines.

    pissa   A and B from the top-r singular vectors of W0, which keeps the residual (Meng et al. 2024,
            https://arxiv.org/abs/2404.02948): training moves the principal directions first.
    olora   A and B from a QR decomposition of W0 (Büyükakyüz 2024, https://arxiv.org/abs/2406.01775).
    corda   A and B from W0 decomposed along the covariance of each layer's inputs on training batches
            (Yang et al. 2024, https://arxiv.org/abs/2406.05223); peft's `preprocess_corda` runs the batches.
    eva     A from the SVD of each layer's activations on training batches, with ranks redistributed between layers
            (Paischer et al. 2024, https://arxiv.org/abs/2410.07170); peft's `initialize_lora_eva_weights`.

loftq (LoRA making up for a 4-bit quantized W0) is refused: its adapter belongs to the quantized base, which is not
saved; the refusal names pissa or QLoRA instead.

pissa, olora and corda subtract the initial B·A from W0 so the model starts where the base did. A saved adapter is
applied to the *untouched* base when a model folder is loaded, so before saving, peft converts the trained adapter
into a plain LoRA of rank 2r relative to the original weights (`save_pretrained(...,
path_initial_model_for_weight_conversion=...)`, which needs the adapter as it was before training: `remember_initial`
keeps it in memory). The folder then loads, predicts the same and merges like any LoRA adapter.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

REWRITES_BASE = ("pissa", "olora", "corda")  # subtract the initial adapter from W0: converted when saved
FROM_DATA = ("eva", "corda")  # computed from training batches
INITIAL = "tunefork_initial_adapter"  # attribute of a peft model: its adapter tensors before training
CALIBRATION_BATCHES, CALIBRATION_ROWS = 8, 8  # training batches eva and corda read, and rows per batch


def attach(model, peft_config, init: str, batches: list | None, name: str = "default"):
    """peft's get_peft_model with the initialisation `init` carried out; `batches`: dicts of model inputs."""
    import torch
    from peft import get_peft_model

    if init == "corda":
        from peft.tuners.lora.corda import preprocess_corda
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        if peft_config.target_modules is None:  # corda runs before wrapping fills in peft's default targets
            peft_config.target_modules = set(DEFAULTS[model.config.model_type])

        def run_model():  # peft's covariance hooks read one sequence per forward: each row alone, padding dropped
            with torch.no_grad():
                for batch in batches:
                    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
                        model(input_ids=ids[mask.bool()][None])

        preprocess_corda(model, peft_config, run_model=run_model)
    peft_model = get_peft_model(model, peft_config, adapter_name=name)
    if init == "eva":
        from peft import initialize_lora_eva_weights

        initialize_lora_eva_weights(peft_model, dataloader=batches, adapter_name=name)
    if init in REWRITES_BASE:
        remember_initial(peft_model)
    return peft_model


def remember_initial(peft_model) -> None:
    from peft.utils import get_peft_model_state_dict

    name = peft_model.active_adapter
    state = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(peft_model, adapter_name=name).items()}
    object.__setattr__(peft_model, INITIAL, state)  # not a module attribute: never saved, moved or trained


def save(peft_model, folder: Path, weights_file: str) -> bool:
    """Save the adapter converted to a plain LoRA on the untouched base, when its initialisation rewrote the base;
    False when it did not (the caller saves as usual)."""
    initial = getattr(peft_model, INITIAL, None)
    if initial is None:
        return False
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as start:
        save_file({k: v.cpu() for k, v in initial.items()}, str(Path(start) / weights_file))
        peft_model.save_pretrained(str(folder), safe_serialization=True, path_initial_model_for_weight_conversion=start)
    return True
