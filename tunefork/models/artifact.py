"""The self-contained `model/` folder: safetensors weights, config, feature metadata, encoder configs, tokenizers.

Everything `Model.load`, `predict`, `serve` and `export` need, and nothing that executes code when read: weights are
safetensors only, and a folder holding pickle weights is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunefork.errors import ModelFolderError

WEIGHTS = "model.safetensors"
CONFIG = "model_hyperparameters.json"
METADATA = "training_set_metadata.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def save(folder: Path, model, config_dict: dict, meta: dict, tokenizers: dict) -> None:
    """Write `folder` atomically: everything goes to a sibling temp folder that is renamed into place."""
    from safetensors.torch import save_model

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(json.dumps(config_dict, indent=2))
    (tmp / METADATA).write_text(json.dumps(meta, indent=2))
    for name, encoder in model.text_encoders().items():
        encoder.transformer.config.save_pretrained(tmp / "encoders" / name)
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
    from safetensors.torch import load_model
    from transformers import AutoTokenizer

    from tunefork import config as config_mod
    from tunefork.models.ecd import ECD

    folder = check(folder)
    config = config_mod.load(json.loads((folder / CONFIG).read_text()))
    meta = json.loads((folder / METADATA).read_text())
    model = ECD(config, meta, meta["pooling"], saved_dir=folder)
    load_model(model, str(folder / WEIGHTS))
    model.eval()
    tokenizers = {
        f.name: AutoTokenizer.from_pretrained(folder / "tokenizers" / f.name, trust_remote_code=f.encoder.trust_remote_code)
        for f in config.input_features
        if f.type == "text"
    }
    return config, meta, model, tokenizers
