"""Tiny offline models and data for tests: real tokenizers trained here, 2-layer random transformers.

They are saved with `save_pretrained` and loaded back through the same `from_pretrained(path)` code users hit.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

POSITIVE = ["great", "wonderful", "superb", "moving", "delightful", "brilliant", "charming", "fresh", "funny", "smart"]
NEGATIVE = ["awful", "boring", "dull", "clumsy", "tedious", "bland", "lifeless", "stale", "messy", "pointless"]
NEUTRAL = ["movie", "film", "story", "plot", "cast", "script", "ending", "director", "scene", "picture", "the", "a",
           "this", "that", "was", "is", "really", "quite", "very", "and", "but", "with", "an", "its", "of"]


def sentiment_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A learnable text task: the label follows the sentiment words; plus a number and a category column."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.random() < 0.5
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 12))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        score = (4.0 if label else 1.0) + rng.gauss(0, 0.5)
        rows.append({
            "review": " ".join(words),
            "sentiment": "positive" if label else "negative",
            "score": round(score, 3),
            "genre": rng.choice(["drama", "comedy", "horror"]),
            "length": len(words),
            "recommended": "yes" if label else "no",
        })
    return pd.DataFrame(rows)


def _corpus() -> list[str]:
    return sentiment_frame(2000, seed=123)["review"].tolist() + ["hello world", "what is the capital of france ?"]


def build_bert(folder: Path, fixed_vocabulary: bool = False) -> Path:
    """`fixed_vocabulary`: every word of the corpus and every character, in sorted order, instead of a trained
    WordPiece vocabulary — whose ties the trainer breaks differently from one process to the next, so the trained
    model differs between runs. Pinned-number tests need the fixed one."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if fixed_vocabulary:
        words = sorted({w for line in _corpus() for w in line.lower().split()})
        chars = sorted({c for w in words for c in w})
        vocab = [*specials, *chars, *(f"##{c}" for c in chars), *(w for w in words if len(w) > 1)]
        tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(dict.fromkeys(vocab))}, unk_token="[UNK]"))
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if not fixed_vocabulary:
        tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def _bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def build_llama(folder: Path, pad_token: bool = False) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=_bpe(), bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>" if pad_token else None, unk_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_gpt2(folder: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=_bpe(), bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    config = GPT2Config(vocab_size=len(fast), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_mamba(folder: Path, version: int = 1) -> Path:
    """A tiny Mamba (version 1) or Mamba-2 language model with the BPE tokenizer (CPU slow path, 2 layers)."""
    import torch
    from transformers import (
        Mamba2Config,
        Mamba2ForCausalLM,
        MambaConfig,
        MambaForCausalLM,
        PreTrainedTokenizerFast,
    )

    fast = PreTrainedTokenizerFast(tokenizer_object=_bpe(), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<|endoftext|>")
    shared = {"vocab_size": len(fast), "hidden_size": 32, "num_hidden_layers": 2, "expand": 2, "conv_kernel": 4,
              "pad_token_id": fast.pad_token_id, "bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id}
    torch.manual_seed(0)
    if version == 1:
        MambaForCausalLM(MambaConfig(state_size=4, **shared)).save_pretrained(folder)
    else:
        config = Mamba2Config(state_size=8, head_dim=16, num_heads=4, n_groups=1, chunk_size=8, **shared)
        Mamba2ForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def ecd_parts(config: dict, frame: pd.DataFrame):
    """What `train` has just before its first step, for an ECD config: (config, fitted metadata, the preprocessed
    table of `frame` as the training split, the plan, the built model) — through the ECD recipe, with no cache and no
    run directory."""
    from tunefork import config as config_mod
    from tunefork import hardware
    from tunefork import plan as plan_mod
    from tunefork.recipes.ecd import ECDRecipe

    loaded = config_mod.load(config)
    recipe = ECDRecipe(loaded)
    prepared = recipe.prepare({"training": frame}, 42, None)
    plan = plan_mod.resolve(loaded, prepared.facts, hardware.detect())
    return loaded, prepared.meta, prepared.tables["training"], plan, recipe.build(prepared, plan, 42)
