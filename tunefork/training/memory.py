"""Memory guard rails: a peak-memory estimate before the first step, and `batch_size: auto` by measured speed.

The estimate adds to what the process already holds (interpreter, libraries, the loaded weights — read from the OS,
not guessed) what training will add: gradients, optimizer state, and the activations autograd keeps for the
backward pass. For a transformer layer the kept activations are about s·b·h·(34 + 5·a·s/h) bytes in 16-bit
(Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models", 2022, §4.1), twice that in
fp32; s is the longest row of a batch (batches pad to their longest), b the batch, h the width, a the heads.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from tunefork.errors import TuneforkError

# optimizer state per trainable parameter, in parameter copies
OPTIMIZER_COPIES = {"adam": 2, "adamw": 2, "adamax": 2, "nadam": 2, "radam": 2, "sgd": 1, "rmsprop": 2, "adagrad": 1,
                    "adadelta": 2}
HEADROOM = 0.9  # never plan to use the last 10% of free memory: allocators fragment and the OS needs some


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM), so the peak of training alone can be read afterwards."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_since_reset() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available(device: str) -> int:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Estimate:
    baseline: int  # bytes the process holds now, weights included
    gradients: int
    optimizer: int
    activations: int  # at the planned batch size
    per_row_activations: float

    @property
    def added(self) -> int:
        return self.gradients + self.optimizer + self.activations

    @property
    def peak(self) -> int:
        return self.baseline + self.added

    def to_dict(self) -> dict:
        mb = 2**20
        return {"baseline_mb": round(self.baseline / mb), "gradients_mb": round(self.gradients / mb),
                "optimizer_mb": round(self.optimizer / mb), "activations_mb": round(self.activations / mb),
                "peak_mb": round(self.peak / mb)}


def _layers_and_shape(transformer) -> tuple[int, int, int]:
    config = getattr(transformer, "config", None)
    config = getattr(config, "text_config", None) or config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 1)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 1)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
    return int(layers), int(hidden), int(heads)


def estimate(model, config, plan, train_table) -> Estimate:
    """What training adds to the process, per the module docstring.

    Activations, per row of the batch and per text encoder that runs during training:
    - trained (fully or through an adapter): autograd keeps every layer's activations until backward, L layers of
      s·h·(34 + 5·a·s/h) bytes in 16-bit (Korthikanti et al. 2022, §4.1);
    - trained with gradient checkpointing (`trainer.enable_gradient_checkpointing`): each layer keeps only its input,
      s·h words (2·s·h·L bytes in 16-bit for the stack, the "full activation recomputation" the paper compares with);
      during backward one layer at a time is recomputed and holds its full s·h·(34 + 5·a·s/h) bytes while its
      gradients are taken, then frees them. So L·s·h words + one layer's activations, instead of L layers' worth:
      with L = 6, h = 384, a = 12 and s = 128 (MiniLM) about 6.5 MB a row instead of 32 MB in fp32;
    - frozen: inference mode keeps nothing; one layer's intermediates are alive at a time.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)
    copies = OPTIMIZER_COPIES.get(config.trainer.optimizer.type, 2)
    if config.trainer.optimizer.type == "sgd" and not config.trainer.optimizer.momentum:
        copies = 0
    elif config.trainer.optimizer.type == "rmsprop":  # square average, + momentum buffer, + centered mean
        copies = 1 + bool(config.trainer.optimizer.momentum) + config.trainer.optimizer.centered
    elif config.trainer.optimizer.type in ("adam", "adamw") and config.trainer.optimizer.amsgrad:
        copies = 3  # + the running maximum of the second moment
    per_row = 0.0
    word = 2 if plan["precision"] in ("bf16", "fp16") else 4
    for name, encoder in model.text_encoders().items():
        column = train_table[name]
        if not hasattr(column, "flat"):
            continue  # cached vectors: the transformer does not run during training
        layers, hidden, heads = _layers_and_shape(encoder.transformer)
        longest = int(column.lengths.max())
        one_layer = longest * hidden * (34 + 5 * heads * longest / hidden) * word / 2  # Korthikanti, per row
        if encoder.frozen:  # inference_mode: only one layer's intermediates are alive at a time
            per_row += longest * (8 * hidden + heads * longest) * word
        elif getattr(encoder, "checkpointed", False):
            # kept: every layer's input (s·h words a row); recomputed in backward: one layer's activations at a time
            per_row += layers * longest * hidden * word + one_layer
        else:
            per_row += layers * one_layer
    rows = plan["batch_size"]
    return Estimate(current_rss() if plan["device"] == "cpu" else torch.cuda.memory_allocated(),
                    trainable_bytes, copies * trainable_bytes, int(per_row * rows), per_row)


def check(est: Estimate, plan, device: str) -> None:
    """Refuse a plan that cannot fit, saying what would."""
    free = available(device)
    if free <= 0 or est.added <= HEADROOM * free:
        return
    fixed = est.gradients + est.optimizer
    rows = math.floor((HEADROOM * free - fixed) / est.per_row_activations + 1e-9) if est.per_row_activations else 0
    hints = []
    if rows >= 1:
        accumulation = math.ceil(plan["batch_size"] / rows)
        hints.append(f"batch_size: {rows} with gradient_accumulation_steps: {accumulation}")
    hints.append("an adapter (adapter: lora trains well under 1% of the weights)")
    hints.append("trainable: false with preprocessing.cache_encoder_embeddings: true")
    raise TuneforkError(
        f"this plan needs about {_size(est.added)} more memory ({_size(est.gradients)} gradients, "
        f"{_size(est.optimizer)} optimizer state, {_size(est.activations)} activations at batch_size "
        f"{plan['batch_size']}) but {_size(free)} are free on the {device}; try " + ", or ".join(hints)
    )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def tune_batch_size(model, config, meta, plan, train_table, est: Estimate, device: str, probe_steps: int = 3):
    """The micro-batch (a divisor of the planned batch that fits in memory) with the best measured examples/s.

    Each candidate runs a few forward + backward passes on real training rows, longest rows included; no optimizer
    step is taken and the RNG is restored, so the run that follows is the one it would have been.
    """
    from tunefork.training import batches
    from tunefork.training.ecd import loss_terms
    from tunefork.training.loop import autocast, to_device

    target = plan["batch_size"]
    free = available(device)
    fits = [b for b in (2**k for k in range(0, int(math.log2(target)) + 1)) if target % b == 0
            and (not est.per_row_activations or est.gradients + est.optimizer + b * est.per_row_activations <= HEADROOM * free)]
    candidates = [b for b in fits if b >= 4] or fits[-1:]
    if len(candidates) <= 1:
        return (candidates[0] if candidates else target), {}
    lengths = batches.lengths(train_table, config)
    order = np.argsort(-lengths) if lengths is not None else np.arange(len(train_table))
    state = torch.get_rng_state()
    rates = {}
    model.train()
    try:
        for size in candidates:
            rows = order[: size * (probe_steps + 1)]
            chunks = [rows[i : i + size] for i in range(0, len(rows), size)][: probe_steps + 1]
            elapsed, seen = 0.0, 0
            for n, index in enumerate(chunks):
                inputs, targets = batches.collate(train_table, index, config, meta)
                inputs, targets = to_device(inputs, device), to_device(targets, device)
                start = time.perf_counter()
                with autocast(plan):
                    loss, _ = loss_terms(config, meta, model(inputs), targets)
                loss.backward()
                if n:  # the first batch of a size warms up kernels and the allocator: not timed
                    elapsed += time.perf_counter() - start
                    seen += len(index)
            model.zero_grad(set_to_none=True)
            rates[size] = seen / elapsed if elapsed else 0.0
    finally:
        torch.set_rng_state(state)
        model.zero_grad(set_to_none=True)
    best = max(rates, key=rates.get)
    return best, rates
