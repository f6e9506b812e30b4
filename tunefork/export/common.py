"""What every export format shares: the probe texts each export is checked on, tunefork's own outputs on them, and
the error an export raises when a format cannot represent a model exactly."""

from __future__ import annotations

from tunefork.errors import TuneforkError

PROBES = ["a", "hello world", "the film was great and the cast was wonderful", "dull , tedious and far too long ?"]
TOLERANCE = 1e-5



class ExportError(TuneforkError):
    """A model this export format cannot represent exactly (says why and what to change)."""


def probe_batch(tokenizer, meta: dict):
    """Probe texts tokenized the way tunefork does (its max length, its padding side, its pad id)."""
    import torch

    rows = [tokenizer(t, truncation=True, max_length=meta["max_sequence_length"])["input_ids"] for t in PROBES]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), meta["pad_token_id"], dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if meta["padding_side"] == "left" else slice(0, len(row))
        ids[i, cols], mask[i, cols] = torch.tensor(row), 1
    return ids, mask


def encode(encoder, input_ids, attention_mask):
    """`TransformerEncoder.encode` without its data-dependent branch (torch.export cannot trace `if tensor.all()`):
    position ids are always counted from the mask where the encoder would count them on left padding. On right
    padding or none that gives every real token the position it has anyway, so the vectors are the same; the export
    checks this against the real forward pass before writing anything."""
    from tunefork.encoders.pooling import pool

    kwargs = {"position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0)} if encoder.positions_from_mask else {}
    out = encoder.transformer(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    hidden = out.last_hidden_state[:, encoder.virtual_tokens:] if encoder.virtual_tokens else out.last_hidden_state
    return pool(hidden, attention_mask, encoder.pooling, getattr(out, "pooler_output", None))


def reference(model, config, meta: dict, args) -> list:
    """What tunefork itself computes for `args` (the model's own forward and output modules), as numpy arrays in
    the export's output order: the yardstick both formats are checked against."""
    import torch

    from tunefork.features import OUTPUTS

    inputs = {f.name: {"input_ids": args[2 * i], "attention_mask": args[2 * i + 1]} for i, f in enumerate(config.input_features)}
    with torch.no_grad():
        logits = model(inputs)
    out = []
    for f in config.output_features:
        predicted = OUTPUTS[f.type].predict(f, meta["outputs"][f.name], logits[f.name])
        out += [logits[f.name].float().numpy(), predicted["predictions" if f.type == "number" else "probabilities"]]
    return out
