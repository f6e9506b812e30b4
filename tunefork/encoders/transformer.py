"""`auto_transformer`: any Hugging Face model as a text encoder, trained in full, frozen, or through an adapter.

Frozen (`trainable: false`, Ludwig's default, no adapter) means eval mode, `inference_mode`, and no parameter in the
optimizer. With an adapter the base weights are frozen by peft but the encoder is *not* frozen: gradients flow through
the transformer to the adapter, and dropout follows train/eval mode as in a full fine-tune.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from tunefork import hf, safety
from tunefork.adapters import wrapper as adapters
from tunefork.encoders.pooling import pool
from tunefork.errors import ModelFolderError, TuneforkError, first_line

WHERE = "encoder.pretrained_model_name_or_path"  # the key a failed load names


def accepts_position_ids(model) -> bool:
    base = model.get_base_model() if adapters.is_peft(model) else model
    return "position_ids" in inspect.signature(base.forward).parameters


def hf_config(encoder):
    """The AutoConfig of an auto_transformer section's model (a small JSON read, to plan before loading weights)."""
    return hf.load_config(encoder.pretrained_model_name_or_path, encoder.pretrained_kwargs, encoder.trust_remote_code,
                          where=WHERE)


def _only_pickle(path: str) -> bool:
    folder = Path(path)
    return folder.is_dir() and not any(folder.glob("*.safetensors")) and any(
        p.suffix in (".bin", ".pt", ".pth", ".ckpt") for p in folder.iterdir())


def _load_kwargs(encoder) -> dict:
    kwargs = dict(encoder.pretrained_kwargs or {})
    if "gguf_file" not in kwargs:
        # safetensors only: transformers then never unpickles a .bin (and fetches only safetensors from the hub)
        kwargs.setdefault("use_safetensors", not safety.pickle_allowed() or None)
    kwargs.setdefault("dtype", torch.float32)  # mixed precision is autocast's job; weights stay fp32
    if encoder.quantization is not None:  # plan refuses it without CUDA; bitsandbytes places the weights itself
        from tunefork.models.llm import quantization_config

        kwargs.update(quantization_config=quantization_config(encoder.quantization),
                      device_map={"": torch.cuda.current_device()})
    return kwargs


def load_transformer(encoder, saved_config_dir: Path | None = None):
    """The pretrained model, or (when loading a saved tunefork model) the bare architecture to receive its weights."""
    from transformers import AutoModel

    path = encoder.pretrained_model_name_or_path
    config = None  # the architecture alone: a saved model's weights follow, `use_pretrained: false` starts untrained
    if saved_config_dir is not None:
        config = hf.load_config(saved_config_dir, None, encoder.trust_remote_code, where="model folder")
    elif not encoder.use_pretrained:
        config = hf.load_config(path, encoder.pretrained_kwargs, encoder.trust_remote_code, where=WHERE)
    try:
        if config is not None:
            return AutoModel.from_config(config, trust_remote_code=encoder.trust_remote_code, dtype=torch.float32)
        return AutoModel.from_pretrained(path, trust_remote_code=encoder.trust_remote_code, **_load_kwargs(encoder))
    except (OSError, ValueError) as exc:
        if _only_pickle(path):
            raise TuneforkError(f"{WHERE} {safety.refusal(path)}") from None
        raise TuneforkError(f"{WHERE} '{path}': cannot load the model ({first_line(exc)})") from None


def _adapted(encoder, saved_config_dir: Path | None, where: str, total_steps: int | None):
    """The transformer wrapped by peft: the saved adapter of a model folder, a `pretrained_adapter_weights` one, or a
    fresh one. The base always comes from `pretrained_model_name_or_path`: model/ holds the adapter only."""
    adapter = encoder.adapter
    if saved_config_dir is not None:
        path = encoder.pretrained_model_name_or_path
        try:
            base = load_transformer(encoder)
        except TuneforkError as exc:
            raise ModelFolderError(
                f"{saved_config_dir.parent.parent}: this model holds {adapter.type} adapter weights only and its base "
                f"model cannot be loaded here — {exc}; make '{path}' reachable, or train with "
                f"adapter.postprocessor.merge_adapter_into_base_model: true for self-contained weights"
            ) from None
        mismatch = adapters.base_config_mismatch(saved_config_dir, base)
        if mismatch:
            raise ModelFolderError(f"{saved_config_dir.parent.parent}: the base model at '{path}' is not the one its "
                                   f"adapter was trained on ({mismatch})")
        return adapters.load(base, saved_config_dir, trainable=False, where=where)
    base = load_transformer(encoder)
    if encoder.quantization is not None:
        from peft import prepare_model_for_kbit_training

        # fp32 layer norms and an input that requires grad, so gradients reach the adapter through 4/8-bit layers
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    if adapter.pretrained_adapter_weights:
        source = pretrained_adapter_source(adapter.pretrained_adapter_weights, where)
        return adapters.load(base, source, trainable=True, where=where, expect=adapter, total_steps=total_steps)
    return adapters.attach(base, adapter, "FEATURE_EXTRACTION", total_steps=total_steps, where=where)


def pretrained_adapter_source(value: str, where: str) -> str:
    """A peft adapter folder as given, or the one adapter inside a tunefork model folder / run directory (with
    several, the user names one of their folders); anything else is passed on as a hub id."""
    folder = Path(value)
    if (folder / adapters.ADAPTER_CONFIG).is_file() or not folder.is_dir():
        return value
    model_dir = folder / "model" if (folder / "model" / "encoders").is_dir() else folder
    found = sorted(p.parent for p in (model_dir / "encoders").glob(f"*/{adapters.ADAPTER_CONFIG}"))
    if len(found) == 1:
        return str(found[0])
    if not found:
        raise TuneforkError(f"{where}.pretrained_adapter_weights: '{value}' holds no adapter (no {adapters.ADAPTER_CONFIG})")
    raise TuneforkError(f"{where}.pretrained_adapter_weights: '{value}' holds several adapters "
                        f"({', '.join(p.name for p in found)}); name one of their folders, e.g. {found[0]}")


class TransformerEncoder(nn.Module):
    def __init__(self, encoder, pooling: str, saved_config_dir: Path | None = None, *, where: str = "encoder",
                 total_steps: int | None = None, gradient_checkpointing: bool = False):
        """`where`: the encoder's YAML path, for errors; `total_steps`: planned optimizer steps (AdaLoRA's budget);
        `gradient_checkpointing`: `trainer.enable_gradient_checkpointing`, which a frozen encoder has no use for."""
        super().__init__()
        has_saved_adapter = saved_config_dir is not None and (saved_config_dir / adapters.ADAPTER_CONFIG).is_file()
        if encoder.adapter is not None and (saved_config_dir is None or has_saved_adapter):
            self.transformer = _adapted(encoder, saved_config_dir, f"{where}.adapter", total_steps)
        else:  # full weights follow from the model folder when loading (a merged adapter included)
            self.transformer = load_transformer(encoder, saved_config_dir)
        self.adapter = encoder.adapter if self.adapted else None
        self.pooling = pooling
        # An adapter trains through the transformer whatever `trainable` says; only a plain frozen model is frozen.
        self.frozen = not encoder.trainable and not self.adapted
        # Prompt tuning puts learned positions in front of the tokens; pooling reads the real tokens only.
        self.virtual_tokens = adapters.virtual_tokens(self.transformer)
        # peft drops position ids for prompt methods (their virtual tokens take the first positions)
        self.positions_from_mask = not self.virtual_tokens and accepts_position_ids(self.transformer)
        self.output_size = self.transformer.config.hidden_size if hasattr(self.transformer.config, "hidden_size") else (
            self.transformer.get_input_embeddings().embedding_dim
        )
        if self.frozen:
            self.transformer.requires_grad_(False)
            self.transformer.eval()
        # Only a transformer that backpropagates keeps activations to recompute; the flag stays off otherwise.
        self.checkpointed = gradient_checkpointing and not self.frozen
        if self.checkpointed:
            self._checkpoint_layers()

    def _checkpoint_layers(self) -> None:
        """Keep each layer's input only and recompute the layer's activations in backward: less memory, one more
        forward pass of compute. It is the Hugging Face model's own checkpointing (under peft, the base model's, as
        for the causal LM in models/llm.py). Non-reentrant checkpointing needs no input that requires grad, so it
        works when the embeddings are frozen under an adapter; it acts in train mode only, so eval runs as before."""
        model = self.transformer.get_base_model() if self.adapted else self.transformer
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise TuneforkError(f"trainer.enable_gradient_checkpointing: {type(model).__name__} does not support "
                                f"gradient checkpointing; remove it")
        # transformers 5 renamed the method (the old name is a deprecated alias that warns on every call)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @property
    def adapted(self) -> bool:
        return adapters.is_peft(self.transformer)

    def merge_adapter(self, progressbar: bool = False) -> None:
        """Fold the adapter into the base weights: afterwards this is a plain transformer with full weights."""
        self.transformer = adapters.merge(self.transformer, progressbar=progressbar)
        self.adapter, self.virtual_tokens = None, 0

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.transformer.eval()  # a frozen encoder never runs dropout
        return self

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if self.positions_from_mask and not bool(attention_mask[:, 0].all()):
            # Left padding. Without position ids a model numbers the padding too, so each real token sits as many
            # places later as its row has padding: harmless for relative positions (RoPE, ALiBi), wrong for learned
            # absolute ones — GPT-2's pooled vector moved by up to 2.6 on a tiny model. Count real tokens only.
            kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = out.last_hidden_state[:, self.virtual_tokens:] if self.virtual_tokens else out.last_hidden_state
        return pool(hidden, attention_mask, self.pooling, getattr(out, "pooler_output", None))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            return self.encode(input_ids, attention_mask)
        with torch.inference_mode():
            pooled = self.encode(input_ids, attention_mask)
        # leave inference mode: the head needs an ordinary tensor it can save for backward
        return pooled.clone()
