"""ECD: every input encoded to a vector → concatenated (+ fc layers) → one head per output.

A text input may arrive as precomputed pooled embeddings (`{"embedding": tensor}`), in which case its encoder is
skipped: that is how training on cached embeddings never runs the transformer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tunefork.config.features import is_transformer
from tunefork.config.schema import Config
from tunefork.encoders import scratch, tabular
from tunefork.encoders.transformer import TransformerEncoder
from tunefork.features import OUTPUTS
from tunefork.models import combiners
from tunefork.models.layers import fc_stack, stack_layers


def module_key(name: str) -> str:
    return name.replace(".", "__")  # nn.ModuleDict keys cannot contain dots


class ECD(nn.Module):
    def __init__(self, config: Config, meta: dict, pooling: dict[str, str], saved_dir: Path | None = None,
                 total_steps: int | None = None):
        """`total_steps`: the planned optimizer steps, which an AdaLoRA adapter's rank budget spans."""
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict()
        built = {}
        for i, feature in enumerate(config.input_features):
            if feature.tied is not None:
                continue  # shares its target's module, below
            if is_transformer(feature):
                saved = saved_dir / "encoders" / feature.name if saved_dir is not None else None
                built[feature.name] = TransformerEncoder(
                    feature.encoder, pooling[feature.name], saved, where=f"input_features[{i}].encoder",
                    total_steps=total_steps, gradient_checkpointing=config.trainer.enable_gradient_checkpointing)
            elif feature.type in ("text", "set"):  # trained from scratch; a saved model's weights replace the start
                built[feature.name] = scratch.build(feature, meta["inputs"][feature.name], saved_dir is None,
                                                    where=f"input_features[{i}].encoder")
            else:
                built[feature.name] = tabular.build(feature, meta["inputs"][feature.name])
        for feature in config.input_features:  # in config order, tied features on their target's module
            self.encoders[module_key(feature.name)] = built[feature.tied or feature.name]
        widths = {f.name: self.encoders[module_key(f.name)].output_size for f in config.input_features}
        self.combiner = combiners.build(config.combiner, widths)
        width = self.combiner.output_size

        self.heads = nn.ModuleDict()
        for feature in config.output_features:
            decoder = feature.decoder
            fc, out_width = fc_stack(width, stack_layers(decoder, prefix="fc_"))
            n = OUTPUTS[feature.type].num_outputs(meta["outputs"][feature.name])
            self.heads[module_key(feature.name)] = nn.Sequential(fc, nn.Linear(out_width, n))

    def text_encoders(self) -> dict[str, TransformerEncoder]:
        """The Hugging Face transformers by input name (text inputs with an encoder trained from scratch have none)."""
        return {f.name: self.encoders[module_key(f.name)] for f in self.config.input_features if is_transformer(f)}

    def merge_adapters(self, only_if_configured: bool = True) -> list[str]:
        """Fold adapters into their base weights (all of them, or those whose config asks for it); their names."""
        merged = []
        for name, encoder in self.text_encoders().items():
            adapter = encoder.adapter
            if adapter is not None and (adapter.postprocessor.merge_adapter_into_base_model or not only_if_configured):
                encoder.merge_adapter(progressbar=adapter.postprocessor.progressbar)
                merged.append(name)
        return merged

    def forward(self, inputs: dict) -> dict[str, torch.Tensor]:
        vectors = []
        for feature in self.config.input_features:
            x = inputs[feature.name]
            if isinstance(x, dict):
                vectors.append(x["embedding"] if "embedding" in x else self.encoders[module_key(feature.name)](**x))
            else:
                vectors.append(self.encoders[module_key(feature.name)](x))
        hidden = self.combiner(dict(zip((f.name for f in self.config.input_features), vectors, strict=True)))
        return {f.name: self.heads[module_key(f.name)](hidden) for f in self.config.output_features}
