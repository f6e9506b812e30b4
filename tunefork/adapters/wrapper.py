"""A Hugging Face model + an adapter section → a peft model; and the few things done with one afterwards.

Reusable for any transformers model: the text encoder passes an `AutoModel` with task type FEATURE_EXTRACTION, a
causal LM (`model_type: llm`) would pass an `AutoModelForCausalLM` with CAUSAL_LM. Saved adapters use peft's own
format (adapter_config.json + adapter_model.safetensors), so `PeftModel.from_pretrained(base, folder)` reads them
outside tunefork too, and `pretrained_adapter_weights` reads adapters trained elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path

from tunefork.adapters import lora_init
from tunefork.adapters.registry import BY_PEFT_TYPE
from tunefork.errors import ConfigError, TuneforkError, first_line

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def attach(model, adapter, task_type: str | None = None, *, total_steps: int | None = None, where: str = "adapter",
           batches: list | None = None, name: str = "default"):
    """`model` wrapped with a fresh `adapter`; peft freezes every base weight. `where` is the adapter's YAML path;
    `batches`: a few training batches (dicts of model inputs) for the LoRA initialisations that read data; `name`:
    the adapter's name in peft (a named adapter of `adapters:`)."""
    from peft import get_peft_model

    adapter.check(model, where)
    peft_config = adapter.to_peft(task_type, total_steps=total_steps, base_path=getattr(model, "name_or_path", None))
    init = getattr(adapter, "init", "default")
    if init in lora_init.FROM_DATA and not batches:
        raise ConfigError([f"{where}.init_lora_weights: {init} initialises from training batches, and this model is "
                           f"built without them (an encoder, or nothing to train); write pissa or olora instead"])
    try:
        if init in (*lora_init.REWRITES_BASE, *lora_init.FROM_DATA, *lora_init.ALTERS_BASE):
            return lora_init.attach(model, peft_config, init, batches, name)
        return get_peft_model(model, peft_config, adapter_name=name)
    except (ValueError, TypeError) as exc:  # peft's refusals of a config that passed our checks, in its words
        raise ConfigError([f"{where}: {adapter.type} cannot be applied to this {model.config.model_type} model "
                           f"({first_line(exc)})"]) from None


def load(model, source: str | Path, *, trainable: bool, where: str = "adapter", expect=None,
         total_steps: int | None = None, name: str = "default"):
    """`model` with the saved adapter at `source` (a folder or hub id) under `name`; `expect`: the section it must
    match. `model` may already be a peft model: the adapter is then added next to the ones it has."""
    from peft import PeftConfig, PeftModel

    try:
        peft_config = PeftConfig.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise TuneforkError(f"{where}: no peft adapter at '{source}' ({first_line(exc)})") from None
    kind = _peft_type(peft_config)
    if expect is not None and kind != expect.peft_type:
        raise ConfigError([f"{where}.pretrained_adapter_weights: '{source}' holds a {_name(kind)} adapter, "
                           f"not {expect.type}"])
    if expect is not None and kind == "ADALORA":
        from tunefork.adapters.adalora import schedule_problem

        peft_config.total_step = expect.schedule_steps(total_steps)  # a new run: the budget spans its own steps
        problem = schedule_problem(peft_config.tinit, peft_config.tfinal, peft_config.total_step)
        if problem:
            raise ConfigError([f"{where}.pretrained_adapter_weights: the saved adapter's {problem}"])
    peft_config.inference_mode = not trainable
    try:
        altered = lora_init.restore_base(model, Path(source), peft_config, beside_others=is_peft(model))
    except (ValueError, KeyError, AttributeError, RuntimeError) as exc:  # no file, or weights of another model
        raise TuneforkError(f"{where}: the adapter at '{source}' does not fit this model ({first_line(exc)})") from None
    try:
        with _no_false_adalora_warnings():
            if is_peft(model):
                model.load_adapter(str(source), adapter_name=name, is_trainable=trainable, config=peft_config)
                peft_model = model
            else:
                peft_model = PeftModel.from_pretrained(model, str(source), adapter_name=name, is_trainable=trainable,
                                                       config=peft_config)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise TuneforkError(f"{where}: the adapter at '{source}' does not fit this model ({first_line(exc)})") from None
    _check_all_loaded(peft_model, Path(source), where, name)
    if altered:
        object.__setattr__(peft_model, lora_init.ALTERED, True)
    return peft_model


def _check_all_loaded(peft_model, folder: Path, where: str, name: str) -> None:
    """peft only warns when saved keys match no module (an adapter trained on another layout, e.g. a
    *ForSequenceClassification whose weights sit under `bert.`): refuse instead of training from scratch silently."""
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        return  # a hub id: peft fetched the file itself
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as saved:
        saved_keys = set(saved.keys())
    with _no_false_adalora_warnings():
        missing = sorted(saved_keys - set(get_peft_model_state_dict(peft_model, adapter_name=name)))
    if missing:
        raise TuneforkError(f"{where}: {len(missing)} tensor(s) of the adapter at '{folder}' match nothing in this "
                            f"model (first: {missing[0]}); it was trained on a different model or layout")


def save(peft_model, folder: Path) -> None:
    """peft's own format: adapter_config.json + adapter_model.safetensors (and peft's README model card)."""
    if lora_init.save(peft_model, folder, ADAPTER_WEIGHTS):  # pissa, olora, corda: a plain LoRA on the untouched base
        return
    with _no_false_adalora_warnings():
        peft_model.save_pretrained(str(folder), safe_serialization=True)


def is_peft(module) -> bool:
    peft = sys.modules.get("peft")  # a model can only be a PeftModel once peft is imported: no 0.2 s import to say no
    return peft is not None and isinstance(module, peft.PeftModel)


def section_type(peft_model):
    """The tunefork section class of the active adapter of a peft model."""
    return BY_PEFT_TYPE[_peft_type(peft_model.active_peft_config)]


def merge(peft_model, progressbar: bool = False):
    """The base model with the adapter folded into its weights (no peft left), or a refusal for prompt methods."""
    section = section_type(peft_model)
    if not section.mergeable:
        raise TuneforkError(f"{_name(section.peft_type)} adapters cannot be merged into the base model: peft has no "
                            f"merge for them (they add prompt tokens, not a weight delta); keep the adapter separate")
    return peft_model.merge_and_unload(progressbar=progressbar)


def trainable_parameters(peft_model) -> tuple[int, int]:
    """(trainable, total) as peft counts them."""
    return peft_model.get_nb_trainable_parameters()


def virtual_tokens(module) -> int:
    """How many learned positions a prompt method puts in front of the input (0 for every other model)."""
    if not is_peft(module):
        return 0
    config = module.active_peft_config
    return config.num_virtual_tokens * (config.num_transformer_submodules or 1) if config.is_prompt_learning else 0


def base_config_mismatch(saved_config_dir: Path, base) -> str | None:
    """Why the base model loaded now is not the one the adapter was trained on (by its architecture), or None."""
    saved = json.loads((saved_config_dir / "config.json").read_text())
    now = base.config.to_dict()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "n_embd", "n_layer"):
        if key in saved and saved[key] != now.get(key):
            return f"{key} is {now.get(key)!r}, the adapter was trained on {saved[key]!r}"
    return None


@contextlib.contextmanager
def _no_false_adalora_warnings():
    """Two peft warnings that are wrong about AdaLoRA (its save → load is exact: tested): a layer whose whole budget
    was pruned has legitimately empty matrices, not unsynced DeepSpeed/FSDP shards; and a loaded rank pattern resizes
    the modules itself, so peft's second, LoRA-style use of it matching nothing changes nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
        warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
        yield


def _peft_type(peft_config) -> str:
    kind = peft_config.peft_type
    return kind.value if hasattr(kind, "value") else str(kind)


def _name(peft_type: str) -> str:
    section = BY_PEFT_TYPE.get(peft_type)
    return section.model_fields["type"].annotation.__args__[0] if section else peft_type.lower()
