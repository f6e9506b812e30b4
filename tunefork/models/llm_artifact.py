"""The `model/` folder of a causal LM: what `Model.load`, `predict` and `evaluate` need, nothing that runs code.

    model_hyperparameters.json   the config
    training_set_metadata.json   model_type, sequence limits, pad id, labels of a category output
    tokenizer/                   the tokenizer as trained (pad token included)
    adapter/                     peft's adapter_config.json + adapter_model.safetensors, and the base's config.json
    weights/                     full weights (save_pretrained, safetensors) — a full fine-tune or a merged adapter

With an adapter only the adapter is saved (kilobytes to megabytes): loading rebuilds the base from `base_model` (and
`pretrained_kwargs`) and applies it. `trainer.type: none` without an adapter saves no weights at all — the model is
the base model. Weights are only ever read from safetensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunefork import hf
from tunefork.adapters import wrapper as adapters
from tunefork.errors import ModelFolderError, TuneforkError
from tunefork.models.artifact import CONFIG, METADATA

ADAPTER, WEIGHTS, TOKENIZER = "adapter", "weights", "tokenizer"


def is_llm_folder(folder: Path) -> bool:
    """True for the model folder (or run directory) of a causal LM."""
    folder = Path(folder)
    for candidate in (folder, folder / "model"):
        path = candidate / METADATA
        if path.is_file():
            try:
                return json.loads(path.read_text()).get("model_type") == "llm"
            except (OSError, ValueError):
                return False
    return False


def save(folder: Path, model, config_dict: dict, meta: dict, tokenizer) -> None:
    """Write `folder` atomically (a sibling temp folder renamed into place)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / CONFIG).write_text(json.dumps(config_dict, indent=2))
    (tmp / METADATA).write_text(json.dumps(meta, indent=2))
    tokenizer.save_pretrained(tmp / TOKENIZER)
    if adapters.is_peft(model):
        adapters.save(model, tmp / ADAPTER)
        model.get_base_model().config.save_pretrained(tmp / ADAPTER)  # to tell a wrong base apart at load time
    elif meta.get("trained"):
        save_full(model, tmp / WEIGHTS)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def save_full(model, folder: Path) -> None:
    """Full weights as safetensors, in the folder layout `AutoModelForCausalLM.from_pretrained` reads."""
    # A base read from a GGUF file keeps its "quantized with gguf" marker although its tensors are dequantized fp32
    # by then; transformers refuses to serialize a model with that marker. The trained tensors are plain, so the
    # marker goes (see tunefork/convert.py for the same step on the base).
    marker = getattr(model.config, "quantization_config", None)
    method = marker.get("quant_method") if isinstance(marker, dict) else getattr(marker, "quant_method", None)
    if str(getattr(method, "value", method)) == "gguf":
        model.hf_quantizer = None
        del model.config.quantization_config
    try:
        model.save_pretrained(folder, safe_serialization=True)
    except ValueError as exc:
        raise TuneforkError(f"cannot save the trained weights ({str(exc).splitlines()[0]})") from None


def check(folder: Path) -> Path:
    folder = Path(folder)
    if not (folder / METADATA).is_file() and (folder / "model" / METADATA).is_file():
        folder = folder / "model"  # a run directory was given
    for name in (CONFIG, METADATA):
        if not (folder / name).is_file():
            raise ModelFolderError(f"{folder}: {name} is missing")
    if not (folder / TOKENIZER).is_dir():
        raise ModelFolderError(f"{folder}: {TOKENIZER}/ is missing")
    for sub in (ADAPTER, WEIGHTS):
        if (folder / sub).is_dir() and not any((folder / sub).glob("*.safetensors")):
            raise ModelFolderError(f"{folder / sub}: no safetensors weights (pickle weights are never read)")
    return folder


def load(folder: Path):
    """(config, metadata, model, tokenizer) from a causal-LM model folder."""
    from tunefork import config as config_mod
    from tunefork.models import llm

    folder = check(folder)
    config = config_mod.load(json.loads((folder / CONFIG).read_text()))
    meta = json.loads((folder / METADATA).read_text())
    tokenizer = hf.load_tokenizer(folder / TOKENIZER, None, config.trust_remote_code, where="model folder")
    if (folder / WEIGHTS).is_dir():
        return config, meta, llm.load_base(config, folder / WEIGHTS).eval(), tokenizer
    try:
        base = llm.load_base(config)
    except TuneforkError as exc:
        what = "adapter weights only" if (folder / ADAPTER).is_dir() else "no weights (trainer.type none)"
        raise ModelFolderError(f"{folder}: this model holds {what} and its base model cannot be loaded here — {exc}") from None
    if (folder / ADAPTER).is_dir():
        mismatch = adapters.base_config_mismatch(folder / ADAPTER, base)
        if mismatch:
            raise ModelFolderError(f"{folder}: the base model at '{config.base_model}' is not the one its adapter was "
                                   f"trained on ({mismatch})")
        base = adapters.load(base, folder / ADAPTER, trainable=False, where="adapter")
    base.requires_grad_(False)
    return config, meta, base.eval(), tokenizer
