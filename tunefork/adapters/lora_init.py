"""LoRA initialisations that start from the base weights or the data, run by peft's own routines.

    pissa   A and B from the top-r singular vectors of W0, which keeps the residual (Meng et al. 2024,
            https://arxiv.org/abs/2404.02948): training moves the principal directions first.
    olora   A and B from a QR decomposition of W0 (Büyükakyüz 2024, https://arxiv.org/abs/2406.01775).
    corda   A and B from W0 decomposed along the covariance of each layer's inputs on training batches
            (Yang et al. 2024, https://arxiv.org/abs/2406.05223); peft's `preprocess_corda` runs the batches.
    eva     A from the SVD of each layer's activations on training batches, with ranks redistributed between layers
            (Paischer et al. 2024, https://arxiv.org/abs/2410.07170); peft's `initialize_lora_eva_weights`.

    loftq   W0 replaced by its NF4-quantized-then-dequantized approximation Q, and B·A by the top-r SVD of W0 − Q,
            alternating loftq_iter times (Li et al. 2023, https://arxiv.org/abs/2310.08659); peft's `loftq_init`,
            which quantizes with bitsandbytes on a CUDA GPU.

pissa, olora and corda subtract the initial B·A from W0 so the model starts where the base did. A saved adapter is
applied to the *untouched* base when a model folder is loaded, so before saving, peft converts the trained adapter
into a plain LoRA of rank 2r relative to the original weights (`save_pretrained(...,
path_initial_model_for_weight_conversion=...)`, which needs the adapter as it was before training: `remember_initial`
keeps it in memory). The folder then loads, predicts the same and merges like any LoRA adapter.

loftq's W0 − Q is full rank, so no such conversion exists: the trained model is Q + B·A. The altered base weights are
saved beside the adapter (`base_layers.safetensors`, by module name) and put back into the untouched base before the
adapter is loaded; the adapter's config then loads as a plain LoRA (peft would otherwise run LoftQ again on load).
Merging folds B·A into Q, which is the trained model itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

REWRITES_BASE = ("pissa", "olora", "corda")  # subtract the initial adapter from W0: converted when saved
FROM_DATA = ("eva", "corda")  # computed from training batches
ALTERS_BASE = ("loftq",)  # replaces W0 by a full-rank approximation: the altered weights are saved with the adapter
BASE_LAYERS = "base_layers.safetensors"  # beside the adapter: the base weights loftq altered, by module name
ALTERED = "tunefork_altered_base"  # attribute of a peft model whose base weights loftq altered
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
    if init in ALTERS_BASE:
        object.__setattr__(peft_model, ALTERED, True)
    return peft_model


def loftq_problem(model) -> str | None:
    """Why peft's LoftQ cannot run on `model` here, with what to write instead; None when it can."""
    import torch
    from peft.import_utils import is_bnb_4bit_available

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return "quantizes the full-precision base itself, and this base is loaded quantized; remove quantization"
    if not torch.cuda.is_available():
        return ("quantizes the base with bitsandbytes on a CUDA GPU, and this machine has none; write pissa (the same "
                "SVD start in full precision), or run on a CUDA GPU")
    if not is_bnb_4bit_available():
        return "quantizes the base with bitsandbytes, which is not installed; pip install bitsandbytes, or write pissa"
    return None


def remember_initial(peft_model) -> None:
    from peft.utils import get_peft_model_state_dict

    name = peft_model.active_adapter
    state = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(peft_model, adapter_name=name).items()}
    object.__setattr__(peft_model, INITIAL, state)  # not a module attribute: never saved, moved or trained


def save(peft_model, folder: Path, weights_file: str) -> bool:
    """Save the adapter converted to a plain LoRA on the untouched base, when its initialisation rewrote the base;
    False when it did not (the caller saves as usual). loftq's altered base weights are written beside it."""
    if getattr(peft_model, ALTERED, False):
        _save_altered_base(peft_model, folder)
    initial = getattr(peft_model, INITIAL, None)
    if initial is None:
        return False
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as start:
        save_file({k: v.cpu() for k, v in initial.items()}, str(Path(start) / weights_file))
        peft_model.save_pretrained(str(folder), safe_serialization=True, path_initial_model_for_weight_conversion=start)
    return True


def _save_altered_base(peft_model, folder: Path) -> None:
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file

    layers = {f"{name}.weight": module.get_base_layer().weight.detach().cpu().contiguous()
              for name, module in peft_model.get_base_model().named_modules() if isinstance(module, LoraLayer)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(layers, str(folder / BASE_LAYERS))


def restore_base(model, source: Path, peft_config, beside_others: bool = False) -> bool:
    """Put loftq's altered base weights saved at `source` back into `model` (the transformers model the adapter is
    about to be loaded on) and make `peft_config` load as a plain LoRA; False when the adapter altered no base weight.
    Raises ValueError when a loftq adapter comes without its base weights, or would join other adapters
    (`beside_others`), whose base it would change."""
    saved = source / BASE_LAYERS  # also there when a loaded loftq adapter trained on and was saved again
    if getattr(peft_config, "init_lora_weights", None) not in ALTERS_BASE and not saved.is_file():
        return False
    if beside_others:
        raise ValueError("it was initialised with loftq, which altered the base weights the other adapters use; "
                         "load it alone (adapter:)")
    if not saved.is_file():
        raise ValueError(f"it was initialised with loftq, which altered the base weights, and {BASE_LAYERS} (those "
                         f"weights) is not beside it; copy the whole adapter folder, or train again")
    import torch
    from safetensors.torch import load_file

    with torch.no_grad():
        for key, weight in load_file(str(saved)).items():
            model.get_parameter(key).copy_(weight)
    peft_config.init_lora_weights, peft_config.loftq_config = True, {}
    return True
