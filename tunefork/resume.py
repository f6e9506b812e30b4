"""What a resumed run may change in its config: only what leaves the arithmetic of the resumed steps alone.

A resumed run continues from a checkpoint — its weights, optimizer state, schedule position, RNG draws and data
order — and `test_resume` holds it to the very weights of a run that never stopped. A config key that changes what a
step computes cannot change in the middle: the run would be neither the old config's nor the new one's (a new
learning rate, say, is printed but the restored scheduler keeps the old one, and the records contradict each other).
So a resume compares the config it is given with the run's own (`description.json`) and refuses any difference
outside the safe set, naming every differing key as a dotted path.

The safe set, and why each is safe:

    trainer.epochs, trainer.train_steps   may grow (more of the same steps), when nothing is spread over the planned
                                          total: no `warmup_fraction`, no linear or cosine decay, and no AdaLoRA
                                          budget without its own `total_step` — each of those re-times every later
                                          step when the total changes. `train_steps` cannot appear or disappear (it
                                          replaces epochs × steps per epoch).
    trainer.early_stop                    when to stop, not what a step computes: the count of stale evaluations is
                                          kept in the checkpoint, and compared with the new patience.
    backend.cache_dir                     where preprocessed data and embeddings are cached: content-addressed, so a
                                          cache hit and a recomputation give the same tensors (the data fingerprints
                                          are checked separately).
    backend.ray.address                   which cluster to join (a restarted head has a new address).
    backend.ray.storage_path              where Ray Train keeps the run's checkpoints (moved with them).
    backend.trainer.max_failures          how many worker failures are survived.

Anything else differs → refused. The changes accepted are recorded in the run directory (`RunDirectory.resumed`).
"""

from __future__ import annotations

import json

from tunefork.errors import ConfigError

SAFE = ("trainer.early_stop", "backend.cache_dir", "backend.ray.address", "backend.ray.storage_path",
        "backend.trainer.max_failures")
GROWING = ("trainer.epochs", "trainer.train_steps")
ABSENT = object()


def flat(node, prefix: str = "") -> dict[str, object]:
    """Dotted paths → leaf values; lists of sections (features) by index, `input_features[0].encoder.type`."""
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        out = {}
        for i, value in enumerate(node):
            out.update(flat(value, f"{prefix}[{i}]"))
        return out
    return {prefix: node}


def changes(recorded: dict, given: dict) -> dict[str, tuple]:
    """Every dotted path whose value differs: {path: (recorded, given)}, `ABSENT` where one side lacks it."""
    old, new = flat(recorded), flat(given)
    return {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in sorted(set(old) | set(new))
            if old.get(k, ABSENT) != new.get(k, ABSENT)}


def _spread_over_total(given: dict) -> str | None:
    """What in this config is spread over the planned total of steps (so a new total re-times later steps)."""
    values = flat(given)
    scheduler = "trainer.learning_rate_scheduler"
    if values.get(f"{scheduler}.warmup_fraction"):
        return f"{scheduler}.warmup_fraction spans the total steps"
    if values.get(f"{scheduler}.decay") in ("linear", "cosine"):
        return f"{scheduler}.decay: {values[f'{scheduler}.decay']} spans the total steps"
    for path, value in values.items():
        if path.endswith("adapter.type") and value == "adalora" and values.get(path[: -len("type")] + "total_step") is None:
            return f"{path[: -len('.type')]}: AdaLoRA's rank budget spans the total steps (set its total_step)"
    return None


def _why_unsafe(path: str, old, new, given: dict) -> str | None:
    """None when `path` may change from `old` to `new` on resume; otherwise the reason, for the error."""
    if path in SAFE:
        return None
    if path not in GROWING:
        return ""
    if old is None or new is None or old is ABSENT or new is ABSENT:
        return "it cannot be set or unset on resume"
    if new < old:
        return "it may only grow"
    return _spread_over_total(given)


def _shown(value) -> str:
    text = "(absent)" if value is ABSENT else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def check(run_path, recorded: dict, given: dict) -> dict[str, tuple]:
    """The safe changes of `given` over the run's `recorded` config, {path: (old, new)}; a ConfigError naming every
    other difference."""
    changed = changes(recorded, given)
    refused = []
    for path, (old, new) in changed.items():
        why = _why_unsafe(path, old, new, given)
        if why is not None:
            refused.append(f"{path} ({_shown(old)} → {_shown(new)}{': ' + why if why else ''})")
    if refused:
        raise ConfigError([f"{run_path}: the config differs from the run being resumed in {'; '.join(refused)}; only "
                           f"{', '.join(GROWING)} (growing), {', '.join(SAFE)} may change on resume: resume with the "
                           f"run's own config (leave out -c) or start a new run"])
    return changed
