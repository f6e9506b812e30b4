"""Reading a Hugging Face model's config and tokenizer: one home for the text encoder and the causal LM alike.

Both kinds of model name a source (`encoder.pretrained_model_name_or_path`, `base_model`: a hub id or a folder),
`pretrained_kwargs` and `trust_remote_code`; every function here takes those as plain values, plus `where`, the config
key the source came from, so a failure is one sentence naming the key and the path. Loading the weights stays with
each model (`encoders/transformer.py`, `models/llm.py`): what they build from the weights differs.

transformers is imported inside the functions: `import tunefork` and config validation stay light.
"""

from __future__ import annotations

from tunefork.errors import TuneforkError, first_line

# The from_pretrained arguments that choose which files are read; they apply to the config and the tokenizer as much
# as to the weights. The others (dtype, attn_implementation, hidden_dropout_prob, ...) are the model's only: AutoConfig
# would set them as attributes and a tokenizer would store them in its tokenizer_config.json.
FILE_KWARGS = ("gguf_file", "revision", "subfolder", "cache_dir", "local_files_only", "token")

# Where configs keep how many positions the model can embed; multimodal configs keep it in their `text_config`.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def file_kwargs(pretrained_kwargs: dict | None) -> dict:
    """The part of `pretrained_kwargs` that also goes to AutoConfig and AutoTokenizer (see `FILE_KWARGS`)."""
    return {k: v for k, v in (pretrained_kwargs or {}).items() if k in FILE_KWARGS}


def load_config(source, pretrained_kwargs: dict | None = None, trust_remote_code: bool = False, *, where: str):
    """The model's `AutoConfig`: a small JSON read, no weights, so a plan can be made before loading them."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            str(source), trust_remote_code=trust_remote_code, **file_kwargs(pretrained_kwargs))
    except (OSError, ValueError) as exc:
        raise TuneforkError(f"{where} '{source}': cannot read its config ({first_line(exc)})") from None


def load_tokenizer(source, pretrained_kwargs: dict | None = None, trust_remote_code: bool = False, *, where: str):
    """The model's `AutoTokenizer`, able to pad. Without a pad token it pads with eos (or unk): every padded position
    is masked out of attention and loss, so which id fills it does not matter."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(source), trust_remote_code=trust_remote_code, **file_kwargs(pretrained_kwargs))
    except (OSError, ValueError) as exc:
        raise TuneforkError(f"{where} '{source}': cannot load its tokenizer ({first_line(exc)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise TuneforkError(f"{where} '{source}': its tokenizer has no pad, eos or unk token to pad with")
    return tokenizer


def context_length(hf_config) -> int | None:
    """How many positions the model can embed, from its config; None when it declares no limit (tokenizers often
    ship without one, so this is the number to trust)."""
    hf_config = getattr(hf_config, "text_config", None) or hf_config
    for key in POSITION_KEYS:
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def is_decoder_only(hf_config) -> bool:
    """True for causal LMs (GPT-2, Llama, Bloom, ...): they have a causal-LM class and no masked-LM / seq2seq one."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    kind = hf_config.model_type
    return (
        kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and kind not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    )
