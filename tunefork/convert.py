"""`tunefork convert-gguf`: a GGUF checkpoint (llama.cpp's format) → a plain Hugging Face folder, once.

transformers reads GGUF files itself (`from_pretrained(dir, gguf_file=...)`, dequantized to fp32), so a config can
point at one directly with `pretrained_kwargs: {gguf_file: ...}`. Two reasons to convert anyway:

- Speed: every GGUF load re-parses and dequantizes the file (about 45 s for a 135 M model here); the converted
  folder loads in about half a second.
- Saving: a model loaded from GGUF keeps `config.quantization_config` and `save_pretrained` refuses it ("The model is
  quantized with gguf and is not serializable"), so a full fine-tune or a merged adapter could not be written. The
  converted folder has no such marker. The weights are the dequantized ones — quantization noise included.

The conversion is the tested workaround: drop the quantization marker from the config, build the architecture with
`from_config`, copy the state dict (every key must match), then `save_pretrained` model and tokenizer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tunefork.errors import TuneforkError


def default_output(gguf_file: str | Path) -> Path:
    """`<cache>/converted/<file stem>`; the cache is $TUNEFORK_CACHE_DIR or ~/.cache/tunefork (as for a run)."""
    root = Path(os.environ.get("TUNEFORK_CACHE_DIR") or Path.home() / ".cache" / "tunefork")
    return root / "converted" / Path(gguf_file).stem


def convert_gguf(gguf_file: str | Path, output: str | Path) -> Path:
    """Write `output` (model safetensors + config + tokenizer) from `gguf_file`; returns `output`.

    An existing complete conversion is reused: the folder is written to a temporary sibling and renamed at the end,
    so its presence means it is whole.
    """
    gguf_file, output = Path(gguf_file), Path(output)
    if not gguf_file.is_file():
        raise TuneforkError(f"{gguf_file}: GGUF file not found")
    if (output / "config.json").is_file() and (output / "model.safetensors").is_file():
        return output
    try:
        import gguf  # noqa: F401  transformers needs it to read the file; say so plainly when it is missing
    except ImportError:
        raise TuneforkError("reading GGUF files needs the gguf package: pip install gguf") from None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the marker that makes save_pretrained refuse the model
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # tied weights (lm_head = embed_tokens) may be absent from one side; anything else means another layout
    missing = [k for k in missing if not _tied(plain, k)]
    if missing or unexpected:
        raise TuneforkError(f"{gguf_file}: the dequantized weights do not fit {type(plain).__name__} "
                            f"({(missing or unexpected)[0]} is {'missing' if missing else 'unexpected'})")
    if getattr(loaded, "generation_config", None) is not None:
        plain.generation_config = loaded.generation_config
    tmp = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    return output


def _tied(model, key: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key.endswith("lm_head.weight")
