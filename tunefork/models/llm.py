"""The causal-LM model of `model_type: llm`: base weights (optionally quantized), adapter, tokenizer, generation.

`build` is the one place a base model becomes the trained model: `AutoModelForCausalLM.from_pretrained(base_model,
**pretrained_kwargs)` — a hub id, a local folder, or a GGUF file in one through `pretrained_kwargs.gguf_file` — then
the adapter from `tunefork.adapters` (task type CAUSAL_LM), the same layer the auto_transformer encoder uses. What
is saved and loaded lives in `models/folder.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from tunefork import hf
from tunefork.adapters import wrapper as adapters
from tunefork.data.prompts import left_padded
from tunefork.errors import ConfigError, TuneforkError, first_line

# ------------------------------------------------------------------------------------------------ the model


def quantization_config(section):
    """transformers' BitsAndBytesConfig for `quantization`; bitsandbytes quantizes on CUDA only."""
    if not torch.cuda.is_available():
        raise ConfigError([f"quantization: {section.bits}-bit loading uses bitsandbytes, which needs a CUDA GPU, and "
                           f"this machine has none; remove the quantization section to load in full precision"])
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TuneforkError("quantization needs the bitsandbytes package: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=section.bits == 4, load_in_8bit=section.bits == 8,
        llm_int8_threshold=section.llm_int8_threshold, llm_int8_has_fp16_weight=section.llm_int8_has_fp16_weight,
        bnb_4bit_compute_dtype=getattr(torch, section.bnb_4bit_compute_dtype),
        bnb_4bit_use_double_quant=section.bnb_4bit_use_double_quant, bnb_4bit_quant_type=section.bnb_4bit_quant_type,
    )


def hf_config(config):
    """The base model's AutoConfig (no weights read)."""
    return hf.load_config(config.base_model, config.pretrained_kwargs, config.trust_remote_code, where="base_model")


def load_tokenizer(config):
    """The base model's tokenizer (without a pad token it pads with eos: padded positions carry no loss)."""
    return hf.load_tokenizer(config.base_model, config.pretrained_kwargs, config.trust_remote_code, where="base_model")


def load_base(config, weights_dir=None):
    """`AutoModelForCausalLM` from `base_model` (with `pretrained_kwargs` and quantization), or the full weights of a
    saved model folder. Weights stay fp32 unless asked otherwise: mixed precision is autocast's job."""
    from transformers import AutoModelForCausalLM

    kwargs = {} if weights_dir else dict(config.pretrained_kwargs or {})
    if "torch_dtype" not in kwargs:
        kwargs.setdefault("dtype", torch.float32)
    if config.quantization is not None:
        kwargs["quantization_config"] = quantization_config(config.quantization)
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # bitsandbytes places the weights itself
    source = weights_dir or config.base_model
    try:
        return AutoModelForCausalLM.from_pretrained(source, trust_remote_code=config.trust_remote_code, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise TuneforkError(f"base_model '{source}': cannot load it as a causal LM ({first_line(exc)})") from None


def build(config, total_steps: int | None = None, batches: list | None = None):
    """The model to train or to predict with: the base, wrapped by a fresh or `pretrained_adapter_weights` adapter.

    Without an adapter, `trainer.type: finetune` trains every weight and `none` freezes them all. `batches`: training
    batches for the LoRA initialisations that read data (eva, corda).
    """
    model = load_base(config)
    finetune = config.trainer.type != "none"  # finetune, or preference tuning
    adapter = config.adapter
    if config.quantization is not None and finetune:
        from peft import prepare_model_for_kbit_training

        # fp32 layer norms and an input that requires grad, so gradients reach the adapter through 4/8-bit layers
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.trainer.enable_gradient_checkpointing)
    if adapter is not None:
        name, where = active_name(config), active_path(config)
        if adapter.pretrained_adapter_weights:
            model = adapters.load(model, adapter.pretrained_adapter_weights, trainable=finetune, where=where,
                                  expect=adapter, total_steps=total_steps, name=name)
        else:
            model = adapters.attach(model, adapter, "CAUSAL_LM", total_steps=total_steps, where=where,
                                    batches=batches, name=name)
        for other, section in inactive(config):
            adapters.load(model, section.pretrained_adapter_weights, trainable=False, where=f"adapters.adapters.{other}",
                          expect=section, name=other)
        model.set_adapter(name, inference_mode=not finetune)  # the active one trains; the others stay frozen
    elif not finetune:
        model.requires_grad_(False)
    if finetune and config.trainer.enable_gradient_checkpointing:
        # recompute each layer's activations in backward instead of keeping them: less memory, ~30 % more compute.
        # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings under an adapter work.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def active_name(config) -> str:
    """peft's name of the adapter that trains and predicts: the active one of `adapters:`, else peft's default."""
    return config.adapters.active if config.adapters is not None else "default"


def active_path(config) -> str:
    return f"adapters.adapters.{config.adapters.active}" if config.adapters is not None else "adapter"


def inactive(config) -> list[tuple[str, object]]:
    """(name, section) of the named adapters that are loaded but not active."""
    if config.adapters is None:
        return []
    return [(name, section) for name, section in config.adapters.adapters.items() if name != config.adapters.active]


def place(model, device: str):
    """`model` on `device`; bitsandbytes-quantized weights were put on their GPU at load and refuse `.to`."""
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        model.to(device)
    return model


def merge(model, progressbar: bool = False):
    """The adapter folded into the base weights (a plain transformers model), or a refusal for prompt methods."""
    return adapters.merge(model, progressbar=progressbar) if adapters.is_peft(model) else model


def logits(model, batch: dict) -> torch.Tensor:
    """Next-token logits at every real position of the batch."""
    # use_cache=False: training and scoring never reuse keys/values, and a cache would only hold memory
    # a packed batch (`data.packing`) has position ids restarting per row and no attention mask
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"), use_cache=False).logits
    virtual = adapters.virtual_tokens(model)  # prompt tuning's learned positions come first: not the text's
    return out[:, virtual:] if virtual else out


def token_loss_sum(logits_: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of each labelled token given the ones before it (position t predicts t+1), and how many
    tokens were scored; prompt and padding positions carry -100 and are skipped."""
    shifted = logits_[:, :-1].reshape(-1, logits_.shape[-1]).float()
    targets = labels[:, 1:].reshape(-1)
    total = torch.nn.functional.cross_entropy(shifted, targets, ignore_index=-100, reduction="sum")
    return total, int((targets != -100).sum())


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], generation, batch_size: int, device: str, amp,
             constraint=None, streamer=None) -> dict:
    """Generate after each prompt. Returns the new tokens per row (prompt stripped, cut at the first eos), the
    decoded responses, the count of generated tokens and the seconds spent in `generate`.

    Prompts are batched longest first, so rows of similar length share a batch (less padding to attend over) and the
    largest batch — the memory peak — comes first. Padding is on the left so every row continues at the same column.
    `constraint` (`models.constrained.Constraint`) masks, at each step, the tokens its pattern does not allow.
    A `streamer` (transformers' TextIteratorStreamer, for one prompt) is handed the tokens as they are generated.
    """
    from transformers import LogitsProcessorList

    model.eval()
    kwargs = generation.kwargs()
    pad = tokenizer.pad_token_id
    eos = kwargs.pop("eos_token_id", tokenizer.eos_token_id)
    stops = set(eos if isinstance(eos, list) else [eos]) - {None}
    order = np.argsort([-len(r) for r in prompt_ids], kind="stable")
    new_tokens: list[list[int] | None] = [None] * len(prompt_ids)
    seconds, generated = 0.0, 0
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        ids, mask = left_padded([prompt_ids[i] for i in index], pad)
        ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        processors = LogitsProcessorList([constraint.processor()] if constraint is not None else [])
        began = time.perf_counter()
        with amp:
            out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, eos_token_id=eos,
                                 logits_processor=processors, **kwargs, **({"streamer": streamer} if streamer else {}))
        seconds += time.perf_counter() - began
        for j, row in zip(index, out[:, ids.shape[1]:].tolist(), strict=True):
            cut = next((t for t, token in enumerate(row) if token in stops), len(row))
            new_tokens[j] = row[:cut]
            generated += cut + (cut < len(row))  # the eos that ended a row was generated too
    responses = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return {"tokens": new_tokens, "responses": [r.strip() for r in responses], "generated_tokens": generated,
            "seconds": seconds}


def save_full(model, folder: Path) -> None:
    """A causal LM's full weights as safetensors, in the folder layout `AutoModelForCausalLM.from_pretrained` reads."""
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
