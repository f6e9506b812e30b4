"""Model folders — the self-contained `model/` of a run — of both kinds: written, read, and told apart.

Everything `Model.load`, `predict`, `serve` and `export` need, and nothing that executes code when read: weights are
safetensors only, and a folder holding pickle weights is refused. Both kinds share:

    model_hyperparameters.json   the config
    training_set_metadata.json   feature metadata (an LLM's has `"model_type": "llm"`: that is how the kinds differ)

An ECD folder (a classifier / regressor) adds `model.safetensors` (every weight but an adapted encoder's base),
`encoders/<feature>/` (the HF config, and peft's adapter files when the encoder trained through an adapter) and
`tokenizers/<feature>/`. A causal-LM folder adds `tokenizer/`, and `adapter/` (peft's files + the base's config.json)
or `weights/` (full weights in the layout `AutoModelForCausalLM.from_pretrained` reads), or neither for a zero-shot
model, which is its base model. With an adapter only the adapter is saved: loading rebuilds the base from
`pretrained_model_name_or_path` / `base_model` and applies it.

Saving never deletes what tunefork did not write: it goes into a new or empty folder, or replaces a tunefork model
folder that holds nothing else (`_replaceable`). The new folder is written whole beside the old one, then renamed into
place; the old one is removed only after that (`_staged`). Loading never obeys the folder's own `trust_remote_code`:
the caller's choice replaces it, and a folder shipping code is refused without it (`tunefork.safety`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tunefork import hf, safety
from tunefork.adapters import wrapper as adapters
from tunefork.config.features import is_transformer
from tunefork.errors import ModelFolderError, TuneforkError, first_line

WEIGHTS = "model.safetensors"
CONFIG = "model_hyperparameters.json"
METADATA = "training_set_metadata.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
LLM_ADAPTER, LLM_WEIGHTS, LLM_TOKENIZER = "adapter", "weights", "tokenizer"
WRITTEN = {WEIGHTS, CONFIG, METADATA, "encoders", "tokenizers", LLM_ADAPTER, LLM_WEIGHTS, LLM_TOKENIZER,
           "model.onnx", "tunefork_onnx.json"}  # and only these (the last two: onnx_engine, on first use)


def locate(folder) -> Path:
    """The model folder itself, also when a run directory is given."""
    folder = Path(folder)
    if not (folder / METADATA).is_file() and (folder / "model" / METADATA).is_file():
        return folder / "model"
    return folder


def kind(folder) -> str:
    """'llm' for a causal LM's folder (or run directory), else 'ecd'."""
    path = locate(folder) / METADATA
    try:
        return "llm" if json.loads(path.read_text()).get("model_type") == "llm" else "ecd"
    except (OSError, ValueError):
        return "ecd"  # check() says what is wrong with it


def check(folder) -> Path:
    """The model folder, or a one-sentence refusal saying what is missing or unsafe in it."""
    folder = locate(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder not found")
    llm = kind(folder) == "llm"
    if not llm and not (folder / WEIGHTS).is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ModelFolderError(f"{folder}: holds pickle weights ({pickled[0]}), which can run code when loaded; only {WEIGHTS} is read")
        raise ModelFolderError(f"{folder}: no {WEIGHTS} (is this a tunefork model folder?)")
    for name in (CONFIG, METADATA):
        if not (folder / name).is_file():
            raise ModelFolderError(f"{folder}: {name} is missing")
    if llm:
        if not (folder / LLM_TOKENIZER).is_dir():
            raise ModelFolderError(f"{folder}: {LLM_TOKENIZER}/ is missing")
        for sub in (LLM_ADAPTER, LLM_WEIGHTS):
            # named adapters (`adapters:`) sit in a folder each
            if (folder / sub).is_dir() and not any((folder / sub).glob("*.safetensors")) and \
                    not any((folder / sub).glob("*/*.safetensors")):
                raise ModelFolderError(f"{folder / sub}: no safetensors weights (pickle weights are never read)")
    return folder


def _replaceable(folder: Path) -> None:
    """Refuse to save over anything tunefork did not write: `folder` must be absent, empty, or a tunefork model folder
    holding only the entries tunefork writes (a README a user put inside would be lost with the old folder)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ModelFolderError(f"{folder}: exists and is not a folder; save the model to a new or empty folder")
    if not folder.exists() or not any(folder.iterdir()):
        return
    if not ((folder / CONFIG).is_file() and (folder / METADATA).is_file()):
        raise ModelFolderError(f"{folder}: not empty and not a tunefork model folder; refusing to replace it "
                               "(save the model to a new or empty folder)")
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in WRITTEN)
    if foreign:
        raise ModelFolderError(f"{folder}: holds '{foreign[0]}', which tunefork did not write; refusing to replace the "
                               "folder (move it out, or save the model elsewhere)")


def _staged(folder: Path, write) -> None:
    """Run `write(tmp)` into a new sibling folder, then put it in place of `folder` whole.

    The sibling's name is unique (pid and random suffix) and hidden, so two saves never share it and no folder of the
    user's is ever taken for it. An old model folder is first renamed aside, then the new one renamed into place, and
    only then is the old one removed: at no point is a half-written folder at `folder`, and a crash between the two
    renames leaves both complete on disk (the old one as `.<name>.replaced-*`)."""
    folder = Path(folder)
    _replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{os.urandom(4).hex()}"
    tmp = folder.with_name(f".{folder.name}.saving-{tag}")
    tmp.mkdir()  # no exist_ok: never someone else's folder
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours, and half-written: nothing is left behind
        raise
    old = folder.with_name(f".{folder.name}.replaced-{tag}") if folder.exists() else None
    if old is not None:
        folder.rename(old)
    try:
        tmp.rename(folder)
    except BaseException:
        if old is not None:
            old.rename(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)


def _records(tmp: Path, config_dict: dict, meta: dict) -> None:
    (tmp / CONFIG).write_text(json.dumps(config_dict, indent=2))
    (tmp / METADATA).write_text(json.dumps(meta, indent=2))


# ------------------------------------------------------------------------------------------------ ECD
def save_ecd(folder: Path, model, config_dict: dict, meta: dict, tokenizers: dict) -> None:
    from safetensors.torch import save_file, save_model

    def write(tmp: Path) -> None:
        skip = _adapted_prefixes(model)
        if skip:  # the base weights of adapted encoders are rebuilt from their pretrained source at load time
            state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(skip)}
            save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        else:
            save_model(model, str(tmp / WEIGHTS))
        _records(tmp, config_dict, meta)
        for name, encoder in model.text_encoders().items():
            encoder.transformer.config.save_pretrained(tmp / "encoders" / name)
            if encoder.adapted:
                adapters.save(encoder.transformer, tmp / "encoders" / name)
        for name, tokenizer in tokenizers.items():
            if hasattr(tokenizer, "save_pretrained"):  # a rule-based tokenizer is its name in the config
                tokenizer.save_pretrained(tmp / "tokenizers" / name)

    _staged(folder, write)


def _load_ecd(folder: Path, config, meta: dict):
    from safetensors import SafetensorError
    from safetensors.torch import load_file, load_model

    from tunefork.features import text
    from tunefork.models.ecd import ECD

    model = ECD(config, meta, meta["pooling"], saved_dir=folder)
    skip = _adapted_prefixes(model)
    try:
        if skip:
            missing, unexpected = model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=False)
            missing = [k for k in missing if not k.startswith(skip)]
            if missing or unexpected:
                raise ModelFolderError(f"{folder}: {WEIGHTS} does not fit its config "
                                       f"({(missing or unexpected)[0]} is {'missing' if missing else 'unexpected'})")
        else:
            load_model(model, str(folder / WEIGHTS))
    except (SafetensorError, RuntimeError, ValueError) as exc:  # truncated, empty, or tensors of another shape
        raise ModelFolderError(f"{folder / WEIGHTS}: cannot be read ({first_line(exc)}); the model folder is "
                               f"damaged: restore it or train again") from None
    tokenizers = {f.name: text.load_tokenizer(f, folder / "tokenizers" / f.name if saved_tokenizer(f) else None)
                  for f in config.input_features if f.type == "text"}
    return model.eval(), tokenizers


def saved_tokenizer(feature) -> bool:
    """Whether a text input's tokenizer is a folder in tokenizers/ (a rule-based one is only its name)."""
    return is_transformer(feature) or feature.preprocessing.splitter is None


def _adapted_prefixes(model) -> tuple[str, ...]:
    """State-dict prefixes of the transformers that are wrapped by an adapter (their weights live elsewhere)."""
    from tunefork.models.ecd import module_key

    return tuple(f"encoders.{module_key(name)}.transformer." for name, e in model.text_encoders().items() if e.adapted)


def merge_adapters(source: Path, destination: Path) -> list[str]:
    """Write a copy of the ECD model folder `source` with every adapter folded into its base weights (self-contained,
    full size, no peft needed to load it); returns the merged feature names. What `export --merge-adapter` calls."""
    source = check(source)
    config_dict = json.loads((source / CONFIG).read_text())
    config, meta, model, tokenizers = load(source)
    merged = model.merge_adapters(only_if_configured=False)
    if not merged:
        raise TuneforkError(f"{source}: no adapter to merge (its encoders hold full weights already)")
    save_ecd(Path(destination), model, config_dict, meta, tokenizers)
    return merged


# ------------------------------------------------------------------------------------------------ causal LM
def save_llm(folder: Path, model, config_dict: dict, meta: dict, tokenizer) -> None:
    def write(tmp: Path) -> None:
        _records(tmp, config_dict, meta)
        tokenizer.save_pretrained(tmp / LLM_TOKENIZER)
        if adapters.is_peft(model):
            adapters.save(model, tmp / LLM_ADAPTER)
            model.get_base_model().config.save_pretrained(tmp / LLM_ADAPTER)  # to tell a wrong base apart at load time
        elif meta.get("trained"):
            from tunefork.models import llm

            llm.save_full(model, tmp / LLM_WEIGHTS)

    _staged(folder, write)


def _load_llm(folder: Path, config, meta: dict):
    from tunefork.models import llm

    tokenizer = hf.load_tokenizer(folder / LLM_TOKENIZER, None, config.trust_remote_code, where="model folder")
    if (folder / LLM_WEIGHTS).is_dir():
        return llm.load_base(config, folder / LLM_WEIGHTS).eval(), tokenizer
    try:
        base = llm.load_base(config)
    except TuneforkError as exc:
        what = "adapter weights only" if (folder / LLM_ADAPTER).is_dir() else "no weights (trainer.type none)"
        raise ModelFolderError(f"{folder}: this model holds {what} and its base model cannot be loaded here — {exc}") from None
    if (folder / LLM_ADAPTER).is_dir():
        mismatch = adapters.base_config_mismatch(folder / LLM_ADAPTER, base)
        if mismatch:
            raise ModelFolderError(f"{folder}: the base model at '{config.base_model}' is not the one its adapter was "
                                   f"trained on ({mismatch})")
        if config.adapters is None:
            base = adapters.load(base, folder / LLM_ADAPTER, trainable=False, where="adapter")
        else:  # peft saved each named adapter in a folder of its name
            for name in [llm.active_name(config), *(name for name, _ in llm.inactive(config))]:
                base = adapters.load(base, folder / LLM_ADAPTER / name, trainable=False, where=f"adapters.adapters.{name}",
                                     name=name)
            base.set_adapter(llm.active_name(config))
    base.requires_grad_(False)
    return base.eval(), tokenizer


# ------------------------------------------------------------------------------------------------ either kind
def refuse_shipped_code(folder: Path, trust_remote_code: bool | None = None) -> bool:
    """The caller's trust (None: the command line's `--trust-remote-code`); without it, a folder shipping code is
    refused before transformers reads anything in it (and before a server listens: `serve_model.Service`)."""
    trust = safety.remote_code_allowed() if trust_remote_code is None else bool(trust_remote_code)
    if not trust:
        shipped = safety.shipped_code(folder)
        if shipped:
            raise ModelFolderError(safety.remote_code_refusal(folder, shipped))
    return trust


def load(folder, trust_remote_code: bool | None = None):
    """(config, metadata, model, tokenizers) from a model folder of either kind, built offline from what it holds
    (an LLM's tokenizers is its one tokenizer).

    `trust_remote_code` is the caller's choice (None: the command line's `--trust-remote-code`, see
    `tunefork.safety`); it replaces whatever the folder's config says, and a folder shipping code is refused without
    it, before anything in it is read by transformers."""
    folder = check(folder)
    trust = refuse_shipped_code(folder, trust_remote_code)
    config, meta = records(folder)
    config = _trusting(config, trust)
    loader = _load_llm if config.model_type == "llm" else _load_ecd
    model, tokenizers = loader(folder, config, meta)
    return config, meta, model, tokenizers


def records(folder) -> tuple:
    """(config, metadata) of a model folder without its weights: what a driver that only schedules needs."""
    from tunefork import config as config_mod

    folder = check(folder)
    return config_mod.load(_json(folder / CONFIG)), _json(folder / METADATA)


def _json(path: Path) -> dict:
    """A model folder's JSON record, or one line saying the folder is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({first_line(exc)}); the model folder is damaged: restore "
                               f"it or train again") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: holds {type(data).__name__}, not a mapping; the model folder is damaged")
    return data


def _trusting(config, trust: bool):
    """The saved config with every `trust_remote_code` (and any hidden in `pretrained_kwargs`) set to the caller's
    `trust`: what the folder says about it is never obeyed."""
    def kwargs(section) -> dict | None:
        given = section.pretrained_kwargs
        return None if given is None else {k: v for k, v in given.items() if k != "trust_remote_code"}

    if config.model_type == "llm":
        return config.model_copy(update={"trust_remote_code": trust, "pretrained_kwargs": kwargs(config)})
    features = [
        f.model_copy(update={"encoder": f.encoder.model_copy(
            update={"trust_remote_code": trust, "pretrained_kwargs": kwargs(f.encoder)})})
        if is_transformer(f) else f
        for f in config.input_features
    ]
    return config.model_copy(update={"input_features": features})
