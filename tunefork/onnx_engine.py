"""Predictions without PyTorch: ONNX Runtime over the model's forward graph, `tokenizers` for its text.

`tunefork predict`, `evaluate` and `serve` start in about a second this way, where loading the torch model costs the
import of torch and transformers first (about 4 s here). The graph is the forward pass `export --format onnx` writes
and checks (token ids + mask in, logits and probabilities / predictions out), kept in the model folder as
`model/model.onnx`:

- **written lazily**, by the first command that wants it, not at train or save time: exporting traces the model
  (seconds for MiniLM), which every training run and every `Model.save` in a test suite would otherwise pay although
  most folders are never served; the folder records why it could not be written when the model does not export;
- **no second copy of the weights**: the graph's initializers are external data pointing into `model.safetensors`
  itself (safetensors stores each tensor's raw bytes at an offset, which is what ONNX's external data reads), so the
  graph file holds the computation only (tens of kB) and reads the same bytes `Model.load` does;
- **checked before it is kept**: onnxruntime's outputs against PyTorch's on probe texts (within 1e-5), and rewritten
  when the safetensors layout it points into changes.

A model with a non-text input, an adapter (its base weights are not in the folder) or a model_type: llm runs on
torch; so does every command given `--engine torch`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

import numpy as np

from tunefork.errors import TuneforkError, first_line

log = logging.getLogger("tunefork.onnx")
GRAPH, SIDECAR, WEIGHTS = "model.onnx", "tunefork_onnx.json", "model.safetensors"
PREFIX = "model."  # the traced forward holds the ECD module as `model`: initializer `model.<key>` is safetensors' `<key>`
ENGINES = ("auto", "onnx", "torch")
BATCH = 64


def _layout(weights: Path) -> str:
    """A digest of the safetensors header: names, dtypes, shapes and offsets of every tensor (not the bytes)."""
    with open(weights, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        return hashlib.blake2b(handle.read(size), digest_size=16).hexdigest()


def _refusal(folder: Path, config, meta: dict) -> str | None:
    """Why this model cannot run on ONNX Runtime, or None."""
    if config.model_type == "llm":
        return "a model_type: llm model generates text with transformers"
    other = next((f for f in config.input_features if f.type != "text"), None)
    if other is not None:
        return f"input '{other.name}' is {other.type}, and the graph reads text only"
    if any((folder / "encoders" / f.name / "adapter_config.json").is_file() for f in config.input_features):
        return "an adapter's base weights are not in the model folder"
    return None


def graph(folder: Path, config, meta: dict) -> tuple[Path | None, str]:
    """(the checked graph, how it was found) — or (None, why not). Writes it on first use."""
    folder = Path(folder)
    why = _refusal(folder, config, meta)
    if why is not None:
        return None, why
    sidecar, layout = folder / SIDECAR, _layout(folder / WEIGHTS)
    if (folder / GRAPH).is_file() and sidecar.is_file():
        try:
            if json.loads(sidecar.read_text()).get("weights_layout") == layout:
                return folder / GRAPH, "found"
        except ValueError:
            pass
    try:
        _write(folder, layout)
    except (OSError, TuneforkError) as exc:
        return None, f"the graph could not be written ({first_line(exc)})"
    except Exception as exc:  # noqa: BLE001 — the tracer's failures are many; any of them means: run on torch
        return None, f"the model does not export to ONNX ({type(exc).__name__}: {first_line(exc)})"
    return folder / GRAPH, "written"


def _write(folder: Path, layout: str) -> None:
    """Trace the forward pass, point its weights into model.safetensors, check it, then rename it into place."""
    import onnx
    import torch

    from tunefork.export import Forward, _load
    from tunefork.export.common import TOLERANCE, probe_batch, reference

    model, config, meta, tokenizers = _load(folder)
    texts = [f.name for f in config.input_features]
    args = tuple(t for name in texts for t in probe_batch(tokenizers[name], meta["inputs"][name]))
    inputs = [f"{name}_{part}" for name in texts for part in ("input_ids", "attention_mask")]
    outputs = [f"{f.name}_{part}" for f in config.output_features
               for part in ("logits", "predictions" if f.type == "number" else "probabilities")]
    batch = torch.export.Dim("batch")
    shapes = (tuple({0: batch, 1: torch.export.Dim(f"{name}_sequence")} for name in texts for _ in range(2)),)
    tag = f".{GRAPH}.{os.getpid()}-{os.urandom(4).hex()}"
    staged = folder / tag
    try:
        # optimize=False keeps each parameter as its own initializer under its module path (the optimizer would fold
        # transposes into new, unnamed constants that match nothing in model.safetensors)
        program = torch.onnx.export(Forward(model, config, meta), args, None, input_names=inputs, output_names=outputs,
                                    dynamic_shapes=shapes, dynamo=True, optimize=False, verbose=False)
        proto = program.model_proto
        _link_weights(proto, folder / WEIGHTS)
        onnx.save_model(proto, str(staged))
        got = _session(staged).run(outputs, {n: a.numpy() for n, a in zip(inputs, args, strict=True)})
        difference = max(float(np.abs(g - e).max()) for g, e in zip(got, reference(model, config, meta, args), strict=True))
        if not difference <= TOLERANCE:
            raise TuneforkError(f"onnxruntime differs from PyTorch by {difference:.2e} on probe texts")
        os.replace(staged, folder / GRAPH)
    finally:
        staged.unlink(missing_ok=True)
    (folder / SIDECAR).write_text(json.dumps({"weights_layout": layout, "inputs": inputs, "outputs": outputs,
                                              "checked_difference": difference}, indent=2))


def _link_weights(proto, weights: Path) -> None:
    """Replace each initializer that is a tensor of model.safetensors by a reference to its bytes there."""
    from onnx import TensorProto

    with open(weights, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(size))
    start = 8 + size
    dtypes = {"F32": TensorProto.FLOAT, "F16": TensorProto.FLOAT16, "BF16": TensorProto.BFLOAT16}
    for tensor in proto.graph.initializer:
        entry = header.get(tensor.name.removeprefix(PREFIX))
        if entry is None or dtypes.get(entry["dtype"]) != tensor.data_type or list(entry["shape"]) != list(tensor.dims):
            continue  # a constant of the graph's own (a shape, a scale): it stays inside the graph
        begin, end = entry["data_offsets"]
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", WEIGHTS), ("offset", str(start + begin)), ("length", str(end - begin))):
            tensor.external_data.add(key=key, value=value)


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Tokenizer:
    """A `tokenizers.Tokenizer` from the folder's tokenizer.json, called the way the text pipeline calls a
    transformers tokenizer (`tokenizer(texts, truncation=True, max_length=n)["input_ids"]`)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as Fast

        self.fast = Fast.from_file(str(path / "tokenizer.json"))
        self.fast.no_padding()

    def __call__(self, texts: list[str], truncation: bool = True, max_length: int | None = None,
                 add_special_tokens: bool = True) -> dict:
        if truncation and max_length:
            self.fast.enable_truncation(max_length)
        else:
            self.fast.no_truncation()
        return {"input_ids": [e.ids for e in self.fast.encode_batch(texts, add_special_tokens=add_special_tokens)]}


class OnnxFitted:
    """The ECD recipe's Fitted, answered by ONNX Runtime: same preprocessing, same prediction columns."""

    engine = "onnx"

    def __init__(self, folder: Path, config, meta: dict, path: Path):
        self.folder, self.config, self.meta = folder, config, meta
        missing = [f.name for f in config.input_features if not (folder / "tokenizers" / f.name / "tokenizer.json").is_file()]
        if missing:
            raise TuneforkError(f"{folder}: tokenizers/{missing[0]}/tokenizer.json is missing (a fast tokenizer is needed)")
        self.tokenizers = {f.name: Tokenizer(folder / "tokenizers" / f.name) for f in config.input_features}
        self.session = _session(path)
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, table) -> dict[str, dict[str, np.ndarray]]:
        """Raw graph outputs per output feature for every row of `table`, length-sorted batches, in row order."""
        from tunefork.training.batches import lengths

        n = len(table)
        by_length = lengths(table, self.config)
        order = np.argsort(by_length, kind="stable") if by_length is not None else np.arange(n)
        parts: list[list[np.ndarray]] = []
        for i in range(0, n, BATCH):
            index = order[i:i + BATCH]
            feed = {}
            for feature in self.config.input_features:
                fitted = self.meta["inputs"][feature.name]
                ids, mask = table[feature.name].padded(index, fitted["pad_token_id"], left=fitted["padding_side"] == "left")
                feed[f"{feature.name}_input_ids"], feed[f"{feature.name}_attention_mask"] = ids, mask
            parts.append(self.session.run(self.outputs, feed))
        back = np.argsort(order, kind="stable")
        merged = [np.concatenate([p[k] for p in parts])[back] if parts else np.zeros((0,)) for k in range(len(self.outputs))]
        return {f.name: dict(zip(("logits", "scores"), merged[2 * i:2 * i + 2], strict=True))
                for i, f in enumerate(self.config.output_features)}

    def _columns(self, raw: dict, table, dropped: int):
        import pandas as pd

        from tunefork.features import OUTPUTS, number

        columns = {"row": table.positions} if dropped else {}
        for feature in self.config.output_features:
            logits, scores = raw[feature.name]["logits"], raw[feature.name]["scores"]
            out = {"finite": np.isfinite(logits).reshape(len(logits), -1).all(-1)}
            if feature.type == "number":  # from the logit in float64, as the torch path does (the graph's is float32)
                shift, scale = number._scale(self.meta["outputs"][feature.name])
                values = logits.reshape(len(logits)).astype(np.float64) * scale + shift
                out["predictions"] = np.clip(values, *feature.clip) if feature.clip is not None else values
            else:
                out["probabilities"] = scores
                out["predictions"] = (scores[:, 1] >= feature.threshold) if feature.type == "binary" else scores.argmax(-1)
            columns.update(OUTPUTS[feature.type].columns(feature, self.meta["outputs"][feature.name], out))
        return pd.DataFrame(columns, index=table.row_index)

    def _table(self, frame, with_outputs: bool):
        from tunefork.features import pipeline
        from tunefork.recipes.ecd import Fitted

        pipeline.check_columns(self.config, {"dataset": frame}, with_outputs=with_outputs)
        table = pipeline.transform(self.config, frame, self.meta, self.tokenizers, with_outputs=with_outputs)
        return table, Fitted._dropped(self, frame, table, with_outputs)  # it reads only self.config

    def predict(self, frame):
        table, dropped = self._table(frame, with_outputs=False)
        return self._columns(self.run(table), table, dropped)

    def evaluate(self, frame) -> tuple[dict, object]:
        """Metrics as the torch path computes them. The losses are the features' own loss functions, which are
        torch's: evaluate imports torch for them (not transformers, and no model is built)."""
        import torch

        from tunefork.training.batches import collate
        from tunefork.training.ecd import Collector, loss_terms
        from tunefork.training.loop import Out

        table, dropped = self._table(frame, with_outputs=True)
        raw = self.run(table)
        index = np.arange(len(table))
        logits = {name: torch.from_numpy(parts["logits"]) for name, parts in raw.items()}
        collector = Collector(self.config, self.meta)
        if len(table):
            targets = collate(table, index, self.config, self.meta, with_targets=True)[1]
            total, terms = loss_terms(self.config, self.meta, logits, targets)
            counted = {n: len(index) if t.is_floating_point() else int((t >= 0).sum()) for n, t in targets.items()}
            collector.add(index, Out(total, len(index), 0, (logits, terms, total, counted)))
        statistics = collector.scores(table)
        for name, unseen in getattr(table, "unseen_labels", {}).items():
            statistics[name]["unseen_label_examples"] = unseen["examples"]
        if dropped:
            statistics["combined"]["dropped_rows"] = dropped
        return statistics, self._columns(raw, table, dropped)


def load(model_path, engine: str = "auto", trust_remote_code: bool = False):
    """(the fitted model, one line saying which engine answers and why). `auto`: ONNX Runtime when the model
    exports, else torch; `onnx`: ONNX Runtime or a one-line refusal; `torch`: the torch model."""
    from tunefork.models import folder as folders

    if engine not in ENGINES:
        raise TuneforkError(f"--engine: '{engine}' is not one of {', '.join(ENGINES)}")
    folder = folders.check(model_path)
    if engine != "torch":
        config, meta = folders.records(folder)
        path, how = graph(folder, config, meta)
        if path is not None:
            return OnnxFitted(folder, config, meta, path), f"engine: onnxruntime ({folder / GRAPH}, {how})"
        if engine == "onnx":
            raise TuneforkError(f"--engine onnx: {how}")
        reason = f"torch ({how})"
    else:
        reason = "torch (--engine torch)"
    from tunefork.api import Model

    model = Model.load(folder, trust_remote_code=trust_remote_code)
    return model.fitted, f"engine: {reason}"
