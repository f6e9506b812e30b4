"""`tunefork export --format hf | onnx`: a trained model in a form other tools load without tunefork.

**hf** writes a folder that plain `transformers` loads with `AutoModelForSequenceClassification.from_pretrained` —
no custom code, so no `trust_remote_code`. That is only honest where a stock class computes exactly what tunefork
computes, so the export is limited to those cases and checks itself on probe texts before it writes anything:

- an encoder (BERT family) pooling with `cls_pooled`: `BertForSequenceClassification` is pooler → dropout → Linear,
  and tunefork's head with no fc layers is that same Linear on the same pooler output;
- a decoder pooling with `last`: `*ForSequenceClassification` scores the rightmost token that is not the pad token,
  which is tunefork's last real token when the pad id never occurs inside a text. Their `score` layer has no bias;
  tunefork's head has one. Where the final norm has a bias (GPT-2's `ln_f`), the head bias b is folded into it:
  score(h + δ) = W h + W δ with W δ = b (δ the least-norm solution; W has full row rank). Llama's RMSNorm has no bias,
  so a Llama head with a bias cannot be written as a stock class and is refused.

tunefork's default masked-mean pooling (and max), which no stock class computes, becomes a sentence-transformers
folder (`export_st.py`, checked the same way); sum pooling, fc layers, several inputs are refused with the change to
make. Category heads keep their classes (`id2label`); a binary head becomes two logits [0, z], whose softmax is
tunefork's [1 − σ(z), σ(z)]; a number head has its normalisation folded in, so the logit is the prediction itself.

**onnx** exports the forward pass (token ids + mask in, logits and probabilities or predictions out, dynamic axes),
checked by onnxruntime against PyTorch on probe texts when onnxruntime is there.

A `model_type: llm` model exports as **hf** only (`export_llm.py`; optimum converts that to ONNX): full weights (adapter
merged with `--merge-adapter`), tokenizer, `generation_config.json`, checked by next-token logits on probe prompts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from tunefork.export.common import TOLERANCE, ExportError, encode, probe_batch, reference

FORMATS = ("hf", "onnx")
def _transformer(encoder, merge_adapter: bool):
    """The bare transformer inside a text encoder, ready to be written out.

    With `--merge-adapter` a PEFT adapter is folded into the base weights first, in the loaded model itself (so the
    ONNX forward and the hf weights both see the merged transformer); prompt methods, which peft cannot merge, are
    refused by the adapters layer. Without it an adapter is refused rather than exported without its adapter.
    """
    if encoder.adapted:
        if not merge_adapter:
            raise ExportError("this model has an adapter: export it with --merge-adapter so its weights are merged in")
        encoder.merge_adapter()
    return encoder.transformer


class Forward:
    """tunefork's forward pass as plain tensors in and out (no dicts, no inference_mode): traceable for export."""

    def __new__(cls, model, config, meta: dict):
        import torch
        from torch import nn

        from tunefork.features import number
        from tunefork.models.ecd import module_key

        class _Forward(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model
                self.text = [f.name for f in config.input_features]
                self.outputs = [(f.name, f.type, getattr(f, "clip", None), number._scale(meta["outputs"][f.name])
                                 if f.type == "number" else None) for f in config.output_features]

            def forward(self, *tensors):
                vectors = [encode(self.model.encoders[module_key(name)], tensors[2 * i], tensors[2 * i + 1])
                           for i, name in enumerate(self.text)]
                hidden = self.model.combiner(dict(zip((f.name for f in self.model.config.input_features), vectors, strict=True)))
                results = []
                for name, kind, clip, scale in self.outputs:
                    logits = self.model.heads[module_key(name)](hidden)
                    if kind == "category":
                        results += [logits, logits.softmax(-1)]
                    elif kind == "binary":
                        p = logits.squeeze(-1).sigmoid()
                        results += [logits, torch.stack([1 - p, p], dim=-1)]
                    else:
                        value = logits.squeeze(-1) * scale[1] + scale[0]
                        results += [logits, value.clamp(*clip) if clip else value]
                return tuple(results)

        return _Forward().eval()


def _load(model_path):
    from tunefork.api import Model

    loaded = Model.load(model_path)
    return loaded.model, loaded.config, loaded.meta, loaded.tokenizers


def _fresh(output: Path) -> Path:
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ExportError(f"{output}: the output folder exists and is not empty; choose a new one")
    return output


def export(model_path, fmt: str, output, *, merge_adapter: bool = False) -> Path:
    """Write the model at `model_path` (model folder or run directory) to `output` in format `fmt`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}' (one of: {', '.join(FORMATS)})")
    output = _fresh(output)
    model, config, meta, tokenizers = _load(model_path)
    if config.model_type == "llm":
        if fmt != "hf":
            raise ExportError(f"a model_type: llm model exports as --format hf only (optimum converts that folder to "
                              f"{fmt}); '{fmt}' is not written here")
        from tunefork.export.llm import write
    else:
        _refuse_scratch(config, fmt)
        write = _hf if fmt == "hf" else _onnx
    output.parent.mkdir(parents=True, exist_ok=True)
    # a new hidden sibling of our own (never a fixed name that could be a user's folder), renamed into place at the end
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.exporting-", dir=output.parent))
    try:
        write(model, config, meta, tokenizers, staging, merge_adapter)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written is left behind
        raise
    if output.exists():
        output.rmdir()
    staging.rename(output)
    return output


def _refuse_scratch(config, fmt: str) -> None:
    """Both formats carry a Hugging Face tokenizer and transformer; a set output's labels have no stock head."""
    from tunefork.config.features import is_transformer

    for feature in config.input_features:
        if feature.type == "text" and not is_transformer(feature):
            raise ExportError(f"--format {fmt} exports auto_transformer text encoders; input '{feature.name}' uses "
                              f"the {feature.encoder.type} encoder trained from scratch: serve the model folder with "
                              f"`tunefork serve` instead")
    for feature in config.output_features:
        if feature.type == "set":
            raise ExportError(f"--format {fmt} has no multi-label head for set output '{feature.name}': serve the "
                              f"model folder with `tunefork serve` instead")


# ----------------------------------------------------------------------------------------------------- hf


def _hf(model, config, meta, tokenizers, folder: Path, merge_adapter: bool) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from tunefork.features import number
    from tunefork.hf import is_decoder_only
    from tunefork.models.ecd import module_key

    if len(config.input_features) != 1 or config.input_features[0].type != "text":
        raise ExportError("--format hf needs exactly one input feature, of type text (a transformers sequence "
                          "classifier reads one text); use --format onnx for this model")
    if len(config.output_features) != 1:
        raise ExportError("--format hf needs exactly one output feature; use --format onnx for several")
    feature, out = config.input_features[0], config.output_features[0]
    if config.combiner.fc_layers or config.combiner.num_fc_layers or out.decoder.num_fc_layers:
        raise ExportError("--format hf cannot represent fc layers between the pooled vector and the classifier; "
                          "set combiner.num_fc_layers and decoder.num_fc_layers to 0 and retrain, or use --format onnx")
    if feature.preprocessing.lowercase:
        raise ExportError("preprocessing.lowercase changes the text before the tokenizer, which an exported tokenizer "
                          "would not repeat; use a lowercasing tokenizer instead and retrain")
    if getattr(out, "clip", None):
        raise ExportError(f"output '{out.name}' clips its predictions, which an exported linear head cannot do")
    encoder = model.text_encoders()[feature.name]
    transformer = _transformer(encoder, merge_adapter)
    pooling, decoder = meta["pooling"][feature.name], is_decoder_only(transformer.config)
    tokenizer, fitted = tokenizers[feature.name], meta["inputs"][feature.name]

    head = model.heads[module_key(out.name)][-1]
    W, b = head.weight.detach().double(), head.bias.detach().double()
    fitted_out = meta["outputs"][out.name]
    if out.type == "category":
        labels = list(fitted_out["vocab"])
    elif out.type == "binary":  # softmax([0, z]) = [1 − σ(z), σ(z)]
        labels = list(fitted_out["labels"])
        W, b = torch.cat([torch.zeros_like(W), W]), torch.cat([torch.zeros_like(b), b])
    else:
        shift, scale = number._scale(fitted_out)
        W, b, labels = W * scale, b * scale + shift, [out.name]
    from tunefork.export import sentence_folder as export_st
    if pooling in export_st.POOLINGS:  # no stock classifier pools this way: a sentence-transformers folder
        export_st.write(model, config, meta, transformer, tokenizer, pooling, (W, b, labels), folder)
        return
    hf_config = transformer.config.__class__.from_dict(transformer.config.to_dict())
    hf_config.num_labels = len(labels)
    hf_config.id2label = dict(enumerate(labels))
    hf_config.label2id = {label: i for i, label in enumerate(labels)}
    hf_config.problem_type = "regression" if out.type == "number" else "single_label_classification"
    hf_config.pad_token_id = fitted["pad_token_id"]
    try:
        classifier = AutoModelForSequenceClassification.from_config(hf_config)
    except ValueError:
        raise ExportError(f"transformers has no sequence-classification class for '{hf_config.model_type}'; "
                          "use --format onnx") from None
    base = getattr(classifier, classifier.base_model_prefix)
    base.load_state_dict(transformer.state_dict(), strict=True)
    if decoder:
        _decoder_head(classifier, base, pooling, W, b, tokenizer, fitted, hf_config.model_type)
    else:
        _encoder_head(classifier, transformer, pooling, W, b, hf_config.model_type)
    classifier.eval()

    difference = _compare(model, config, meta, tokenizer, classifier, out.type)
    if difference > TOLERANCE:
        raise ExportError(f"the {type(classifier).__name__} export differs from tunefork by {difference:.2e} on probe "
                          f"texts (tolerance {TOLERANCE:g}); nothing was written — use --format onnx")
    classifier.save_pretrained(folder)
    tokenizer.model_max_length = fitted["max_sequence_length"]  # `truncation=True` then cuts where tunefork did
    tokenizer.save_pretrained(folder)
    _card(folder, type(classifier).__name__, out, labels, difference)


def _encoder_head(classifier, transformer, pooling: str, W, b, model_type: str) -> None:
    import torch

    if pooling != "cls_pooled":
        raise ExportError(f"pooling '{pooling}' has no stock transformers sequence-classification class (they pool the "
                          "first token through the model's pooler); set encoder.reduce_output: cls_pooled and retrain, "
                          "or use --format onnx")
    linear = getattr(classifier, "classifier", None)
    if getattr(transformer, "pooler", None) is None or not isinstance(linear, torch.nn.Linear):
        raise ExportError(f"{type(classifier).__name__} ({model_type}) is not a single linear layer on the pooler "
                          "output, so tunefork's head cannot be placed in it exactly; use --format onnx")
    with torch.no_grad():
        linear.weight.copy_(W)
        linear.bias.copy_(b)


def _decoder_head(classifier, base, pooling: str, W, b, tokenizer, fitted: dict, model_type: str) -> None:
    import torch

    if pooling != "last":
        raise ExportError(f"a decoder's transformers sequence classifier scores the last token; pooling '{pooling}' "
                          "differs — set encoder.reduce_output: last and retrain, or use --format onnx")
    score = getattr(classifier, "score", None)
    if not isinstance(score, torch.nn.Linear) or score.bias is not None:
        raise ExportError(f"{type(classifier).__name__} has no plain `score` layer to hold the head; use --format onnx")
    pad = fitted["pad_token_id"]
    if pad in tokenizer("hello world")["input_ids"]:
        raise ExportError("the tokenizer adds its pad token to every text, so transformers would score the wrong "
                          "token; give the tokenizer a distinct pad token and retrain, or use --format onnx")
    with torch.no_grad():
        score.weight.copy_(W)
        if b.abs().max() > 0:
            norm = next((getattr(base, n) for n in ("ln_f", "final_layer_norm") if hasattr(base, n)), None)
            if norm is None or getattr(norm, "bias", None) is None:
                raise ExportError(f"{type(classifier).__name__}'s score layer has no bias and {model_type}'s final "
                                  "norm has none to fold it into, so tunefork's head bias cannot be represented; "
                                  "use --format onnx")
            delta = torch.linalg.lstsq(W, b.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)  # least-norm W δ = b
            norm.bias.add_(delta.to(norm.bias.dtype))


def _compare(model, config, meta, tokenizer, classifier, kind: str) -> float:
    """Largest difference between tunefork's and the exported model's outputs on a padded probe batch."""
    import torch

    ids, mask = probe_batch(tokenizer, meta["inputs"][config.input_features[0].name])
    ours = reference(model, config, meta, (ids, mask))[1]
    with torch.no_grad():
        logits = classifier(input_ids=ids, attention_mask=mask).logits.double()
    theirs = logits.squeeze(-1) if kind == "number" else logits.softmax(-1)
    return float(abs(ours - theirs.numpy()).max())


def _card(folder: Path, cls: str, out, labels: list, difference: float) -> None:
    how = "softmax over the logits gives the class probabilities" if out.type != "number" else "the logit is the prediction"
    (folder / "README.md").write_text(f"""# Exported from tunefork

Load with plain transformers (no custom code):

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
logits = model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits
```

- class: `{cls}`; output `{out.name}` ({out.type}): {how}.
- labels: {", ".join(map(str, labels[:50]))}
- checked against tunefork on probe texts: largest difference {difference:.2e}.
""")


# --------------------------------------------------------------------------------------------------- onnx


def _onnx(model, config, meta, tokenizers, folder: Path, merge_adapter: bool) -> None:
    import torch

    other = [f for f in config.input_features if f.type != "text"]
    if other:
        raise ExportError(f"--format onnx covers models whose inputs are all text; '{other[0].name}' is a "
                          f"{other[0].type} input")
    for feature in config.input_features:
        _transformer(model.text_encoders()[feature.name], merge_adapter)
    texts = [f.name for f in config.input_features]
    single = len(texts) == 1
    input_names = [n for t in texts for n in ((f"{t}_input_ids", f"{t}_attention_mask") if not single else ("input_ids", "attention_mask"))]
    output_names = [f"{f.name}_{part}" for f in config.output_features
                    for part in ("logits", "predictions" if f.type == "number" else "probabilities")]
    args = tuple(t for name in texts for t in probe_batch(tokenizers[name], meta["inputs"][name]))
    forward = Forward(model, config, meta)
    batch = torch.export.Dim("batch")
    sequence = {name: torch.export.Dim(f"{name}_sequence") for name in texts}  # each text has its own length
    shapes = (tuple({0: batch, 1: sequence[name]} for name in texts for _ in range(2)),)  # forward(*tensors): one entry
    path = folder / "model.onnx"
    torch.onnx.export(forward, args, str(path), input_names=input_names, output_names=output_names,
                      dynamic_shapes=shapes, dynamo=True, external_data=False, verbose=False)
    difference = _check_onnx(path, reference(model, config, meta, args), args, input_names)
    if difference is not None and difference > TOLERANCE:
        raise ExportError(f"onnxruntime differs from PyTorch by {difference:.2e} on probe texts; nothing was written")
    for name in texts:
        tokenizers[name].save_pretrained(folder / "tokenizers" / name)
    (folder / "tunefork_onnx.json").write_text(json.dumps({
        "inputs": {name: {"input_ids": input_names[2 * i], "attention_mask": input_names[2 * i + 1],
                          "tokenizer": f"tokenizers/{name}", **{k: meta["inputs"][name][k] for k in
                                                                 ("max_sequence_length", "pad_token_id", "padding_side")}}
                   for i, name in enumerate(texts)},
        "outputs": {f.name: {"type": f.type, "names": [n for n in output_names if n.startswith(f"{f.name}_")],
                             "labels": meta["outputs"][f.name].get("vocab") or meta["outputs"][f.name].get("labels")}
                    for f in config.output_features},
        "checked_difference": difference,
    }, indent=2))


def _check_onnx(path: Path, expected: list, args, input_names) -> float | None:
    try:
        import onnxruntime
    except ImportError:
        return None

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: a.numpy() for n, a in zip(input_names, args, strict=True)})
    return max(float(abs(g - e).max()) for g, e in zip(got, expected, strict=True))
