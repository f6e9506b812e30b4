"""The self-contained `model/` folder: safetensors weights, config, feature metadata, encoder configs, tokenizers.

Everything `Model.load`, `predict`, `serve` and `export` need, and nothing that executes code when read: weights are
safetensors only, and a folder holding pickle weights is refused.

A text encoder trained through an adapter is saved as the adapter alone, in peft's format, next to its HF config
(`encoders/<name>/adapter_config.json` + `adapter_model.safetensors`), and model.safetensors leaves out its base
weights: loading rebuilds the base from `pretrained_model_name_or_path` and applies the adapter. A merged adapter
(`merge_adapter_into_base_model`, or `merge_adapters` below) is saved as full weights, like a full fine-tune.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunefork import hf
from tunefork.errors import ModelFolderError

WEIGHTS = "model.safetensors"
CONFIG = "model_hyperparameters.json"
METADATA = "training_set_metadata.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def save(folder: Path, model, config_dict: dict, meta: dict, tokenizers: dict) -> None:
    """Write `folder` atomically: everything goes to a sibling temp folder that is renamed into place."""
    from safetensors.torch import save_file, save_model

    from tunefork.adapters import wrapper as adapters

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skip = _adapted_prefixes(model)
    if skip:  # the base weights of adapted encoders are rebuilt from their pretrained source at load time
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(skip)}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    else:
        save_model(model, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(json.dumps(config_dict, indent=2))
    (tmp / METADATA).write_text(json.dumps(meta, indent=2))
    for name, encoder in model.text_encoders().items():
        encoder.transformer.config.save_pretrained(tmp / "encoders" / name)
        if encoder.adapted:
            adapters.save(encoder.transformer, tmp / "encoders" / name)
        tokenizers[name].save_pretrained(tmp / "tokenizers" / name)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def check(folder: Path) -> Path:
    folder = Path(folder)
    if (folder / "model" / WEIGHTS).is_file() and not (folder / WEIGHTS).is_file():
        folder = folder / "model"  # a run directory was given
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder not found")
    if not (folder / WEIGHTS).is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ModelFolderError(f"{folder}: holds pickle weights ({pickled[0]}), which can run code when loaded; only {WEIGHTS} is read")
        raise ModelFolderError(f"{folder}: no {WEIGHTS} (is this a tunefork model folder?)")
    for name in (CONFIG, METADATA):
        if not (folder / name).is_file():
            raise ModelFolderError(f"{folder}: {name} is missing")
    return folder


def load(folder: Path):
    """(config, metadata, model, tokenizers) from a model folder, built offline from what the folder holds."""
    from safetensors.torch import load_file, load_model

    from tunefork import config as config_mod
    from tunefork.models.ecd import ECD

    folder = check(folder)
    config = config_mod.load(json.loads((folder / CONFIG).read_text()))
    meta = json.loads((folder / METADATA).read_text())
    model = ECD(config, meta, meta["pooling"], saved_dir=folder)
    skip = _adapted_prefixes(model)
    if skip:
        missing, unexpected = model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=False)
        missing = [k for k in missing if not k.startswith(skip)]
        if missing or unexpected:
            raise ModelFolderError(f"{folder}: {WEIGHTS} does not fit its config "
                                   f"({(missing or unexpected)[0]} is {'missing' if missing else 'unexpected'})")
    else:
        load_model(model, str(folder / WEIGHTS))
    model.eval()
    tokenizers = {
        f.name: hf.load_tokenizer(folder / "tokenizers" / f.name, None, f.encoder.trust_remote_code, where="model folder")
        for f in config.input_features
        if f.type == "text"
    }
    return config, meta, model, tokenizers


def _adapted_prefixes(model) -> tuple[str, ...]:
    """State-dict prefixes of the transformers that are wrapped by an adapter (their weights live elsewhere)."""
    from tunefork.models.ecd import module_key

    return tuple(f"encoders.{module_key(name)}.transformer." for name, e in model.text_encoders().items() if e.adapted)


def merge_adapters(source: Path, destination: Path) -> list[str]:
    """Write a copy of the model folder `source` with every adapter folded into its base weights (self-contained,
    full size, no peft needed to load it); returns the merged feature names. What `export --merge-adapter` calls."""
    from tunefork.errors import TuneforkError

    source = check(source)
    config_dict = json.loads((source / CONFIG).read_text())
    _, meta, model, tokenizers = load(source)
    merged = model.merge_adapters(only_if_configured=False)
    if not merged:
        raise TuneforkError(f"{source}: no adapter to merge (its encoders hold full weights already)")
    save(Path(destination), model, config_dict, meta, tokenizers)
    return merged
