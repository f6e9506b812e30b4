"""Training checkpoints: everything a killed run needs to continue exactly where it stopped, and nothing pickled.

A checkpoint is a folder `checkpoints/step-<N>/` holding `tensors.safetensors` (trainable weights and buffers,
optimizer state, torch RNG) and `state.json` (progress, history, scheduler, numpy RNG, optimizer hyper-parameters).
It is written to a temporary folder, fsync'ed and renamed; `checkpoints/pointer.json` (replaced atomically the same
way) names the last and the best. A folder the pointer does not name is garbage and is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

POINTER = "pointer.json"


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                plain["state"].setdefault(str(index), {})[name] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict] = {int(k): dict(v) for k, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


class Checkpoints:
    """Writes checkpoints into `folder`, keeping the last and the best."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seconds = 0.0  # spent writing checkpoints, for efficiency.json

    def pointer(self) -> dict:
        path = self.folder / POINTER
        return json.loads(path.read_text()) if path.is_file() else {}

    def save(self, trainable: dict[str, torch.Tensor], optimizer, scheduler, scaler, progress: dict, history: dict,
             rng_state: dict, is_best: bool, adapter: tuple[dict, dict] = ({}, {})) -> Path:
        """`adapter`: (tensors, plain state) of adapters that keep statistics between steps (AdaLoRA)."""
        from safetensors.torch import save_file

        started = time.perf_counter()
        name = f"step-{progress['step']}"
        target = self.folder / name
        tmp = self.folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in trainable.items()}
        optimizer_tensors, optimizer_plain = _flatten_optimizer(optimizer.state_dict())
        tensors.update(optimizer_tensors)
        tensors["rng/torch"] = torch.get_rng_state()
        tensors.update({f"adapter/{k}": v.detach().cpu().contiguous() for k, v in adapter[0].items()})
        save_file(tensors, str(tmp / "tensors.safetensors"))
        state = {"progress": progress, "history": history, "scheduler": scheduler.state_dict(), "numpy_rng": rng_state,
                 "optimizer": optimizer_plain, "scaler": scaler.state_dict() if scaler is not None else None,
                 "adapter": adapter[1]}
        (tmp / "state.json").write_text(json.dumps(state))
        _fsync_tree(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        pointer = self.pointer()
        pointer["last"] = name
        if is_best or "best" not in pointer:
            pointer["best"] = name
        _write_json_atomic(self.folder / POINTER, pointer)
        for old in self.folder.iterdir():  # keep the last and the best only
            if old.is_dir() and old.name not in (pointer["last"], pointer["best"]):
                shutil.rmtree(old, ignore_errors=True)
        self.seconds += time.perf_counter() - started
        return target


def load(folder: Path, which: str = "last") -> dict | None:
    """The checkpoint named `which` in the pointer, as tensors and state; None when there is none."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / POINTER
    if not path.is_file():
        return None
    pointer = json.loads(path.read_text())
    name = pointer[which]
    tensors = load_file(str(folder / name / "tensors.safetensors"))
    state = json.loads((folder / name / "state.json").read_text())
    best = tensors if pointer["best"] == name else load_file(str(folder / pointer["best"] / "tensors.safetensors"))
    return {
        "model": {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")},
        "best_model": {k[len("model/"):]: v for k, v in best.items() if k.startswith("model/")},
        "optimizer": _unflatten_optimizer(tensors, state["optimizer"]),
        "torch_rng": tensors["rng/torch"],
        "adapter": ({k[len("adapter/"):]: v for k, v in tensors.items() if k.startswith("adapter/")}, state.get("adapter", {})),
        **{k: state[k] for k in ("progress", "history", "scheduler", "numpy_rng", "scaler")},
    }
