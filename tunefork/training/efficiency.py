"""Wall seconds per phase, throughput and peak memory: the units every run is compared in (efficiency.json)."""

from __future__ import annotations

import contextlib
import resource
import time


class Phases:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_device_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def record(plan, phases: Phases, history, **extra) -> dict:
    """efficiency.json: the same units for every run, whatever the recipe (ECD or LLM)."""
    return {
        "device": plan["device"],
        "precision": plan["precision"],
        "seconds": {k: round(v, 3) for k, v in phases.seconds.items()},
        "train_examples_per_second": history.train_examples / max(history.train_seconds, 1e-9),
        "train_tokens_per_second": history.train_tokens / max(history.train_seconds, 1e-9),
        "train_examples": history.train_examples,
        "train_tokens": history.train_tokens,
        # the share of the positions the model computed that were padding (a causal LM's batches; packs included)
        "train_padding_share": round(1 - history.train_tokens / history.train_positions, 4)
        if history.train_positions else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_device_mb": peak_device_mb(),
        "final_validation": history.best,
        **extra,
    }
