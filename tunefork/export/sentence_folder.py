"""`export --format hf` of a mean- or max-pooled text classifier: a sentence-transformers folder.

No stock transformers `*ForSequenceClassification` class pools by a masked mean (tunefork's default) or max, and
writing one as custom modeling code would need `trust_remote_code` to load. sentence-transformers pools exactly that
way from plain files: its `modules.json` chains Transformer → Pooling → Dense, each a module it ships, configured by
JSON and safetensors only. So the folder is the classic layout (that of all-MiniLM-L6-v2, plus a Dense head), which
every sentence-transformers release since 2.x reads (6.x through its import map for `sentence_transformers.models`):

    config.json, model.safetensors, tokenizer files   the encoder, as AutoModel saves it
    sentence_bert_config.json                        max_seq_length = tunefork's max_sequence_length
    1_Pooling/config.json                            mean (or max) over the attention mask
    2_Dense/config.json, model.safetensors           tunefork's head: Linear, Identity activation

`SentenceTransformer(folder).encode(texts)` then returns the head's logits: softmax gives a category or binary
output's probabilities (a binary head is written as the two logits [0, z], whose softmax is [1 − σ(z), σ(z)]), and a
number output's single value is the prediction (its normalisation folded into the weights). Before anything is
written where the user asked, the folder is loaded back — by sentence-transformers when it is installed (the
`export` extra), else by plain transformers + the same pooling + the Dense weights read from their file — and its
outputs on probe texts must equal tunefork's within the export tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunefork.export.common import PROBES, TOLERANCE, ExportError, probe_batch, reference

POOLINGS = {"mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
]


def write(model, config, meta, transformer, tokenizer, pooling: str, head: tuple, folder: Path) -> float:
    """Write the folder for `transformer` + `pooling` + the linear `head` (W, b, labels); returns the difference."""
    from safetensors.torch import save_file
    from transformers import AutoModel

    W, b, labels = head
    out = config.output_features[0]
    fitted = meta["inputs"][config.input_features[0].name]
    plain = AutoModel.from_config(transformer.config.__class__.from_dict(transformer.config.to_dict()))
    plain.load_state_dict(transformer.state_dict(), strict=True)  # an unwrapped copy: no adapter or peft wrapper
    plain.save_pretrained(folder)
    tokenizer.model_max_length = fitted["max_sequence_length"]
    tokenizer.padding_side = "right"  # sentence-transformers passes no position ids: real tokens must come first
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(fitted["pad_token_id"])
    tokenizer.save_pretrained(folder)
    width = W.shape[1]
    files = {
        "modules.json": MODULES,
        "sentence_bert_config.json": {"max_seq_length": fitted["max_sequence_length"], "do_lower_case": False},
        "config_sentence_transformers.json": {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": None},
        "1_Pooling/config.json": {"word_embedding_dimension": width, **dict.fromkeys(
            ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
             "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"), False),
            POOLINGS[pooling]: True, "include_prompt": True},
        "2_Dense/config.json": {"in_features": width, "out_features": len(labels), "bias": True,
                                "activation_function": "torch.nn.modules.linear.Identity"},
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2))
    save_file({"linear.weight": W.float().contiguous(), "linear.bias": b.float().contiguous()},
              str(folder / "2_Dense" / "model.safetensors"))

    ours = reference(model, config, meta, probe_batch(tokenizer, fitted))[1]
    logits = _load_back(folder, pooling)
    theirs = logits.squeeze(-1) if out.type == "number" else logits.softmax(-1)
    difference = float(abs(ours - theirs.numpy()).max())
    if not difference <= TOLERANCE:
        raise ExportError(f"the sentence-transformers export differs from tunefork by {difference:.2e} on probe texts "
                          f"(tolerance {TOLERANCE:g}); nothing was written — use --format onnx")
    _card(folder, out, labels, pooling, difference)
    return difference


def _load_back(folder: Path, pooling: str):
    """The probe texts' Dense outputs (float64) as a reader of the folder computes them."""
    import torch

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return _load_back_plainly(folder, pooling)
    try:
        reader = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    except Exception as exc:  # a layout it cannot read is the export's failure, said in one line
        raise ExportError(f"sentence-transformers cannot load the exported folder ({exc}); nothing was written") from None
    with torch.no_grad():
        return reader.encode(PROBES, batch_size=len(PROBES), convert_to_tensor=True).double().cpu()


def _load_back_plainly(folder: Path, pooling: str):
    """Without sentence-transformers: AutoModel + AutoTokenizer from the folder, its pooling, its Dense weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from tunefork.encoders.pooling import pool

    encoder, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    dense = load_file(str(folder / "2_Dense" / "model.safetensors"))
    batch = tokenizer(PROBES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        vectors = pool(hidden, batch["attention_mask"], pooling)
        return (vectors @ dense["linear.weight"].T + dense["linear.bias"]).double()


def _card(folder: Path, out, labels: list, pooling: str, difference: float) -> None:
    how = ("the value is the prediction" if out.type == "number"
           else "softmax over the values gives the class probabilities, in the order of the labels below")
    (folder / "README.md").write_text(f"""# Exported from tunefork

A sentence-transformers folder (Transformer → Pooling({pooling}) → Dense); no custom code:

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(folder)
logits = model.encode(texts, convert_to_tensor=True)
```

- output `{out.name}` ({out.type}): {how}.
- labels: {", ".join(map(str, labels[:50]))}
- checked against tunefork on probe texts: largest difference {difference:.2e}.
""")
