"""Training checkpoints: everything a killed run needs to continue exactly where it stopped, and nothing pickled.

A checkpoint is a folder `checkpoints/step-<N>/` holding `tensors.safetensors` (trainable weights and buffers,
optimizer state, torch RNG) and `state.json` (progress, history, scheduler, numpy RNG, optimizer hyper-parameters).
It is written to a temporary folder, fsync'ed and renamed; `checkpoints/pointer.json` (replaced atomically the same
way) names the last and the best. A folder the pointer does not name is garbage and is removed.

A write that fails (disk full, permissions) removes its temporary folder and leaves the pointer as it was, so the
previous checkpoint stays the one a resume reads; the failure is one sentence saying so (`EnvironmentFailure`,
exit 1). A resume that finds the last checkpoint unreadable (missing, truncated) falls back to the best one, the
other kept, with a warning; the last is always at least as new, so nothing newer is lost by trying it first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from tunefork.errors import EnvironmentFailure, TuneforkError, environment_failure, first_line

log = logging.getLogger("tunefork")
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
        started = time.perf_counter()
        name = f"step-{progress['step']}"
        tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in trainable.items()}
        optimizer_tensors, optimizer_plain = _flatten_optimizer(optimizer.state_dict())
        tensors.update(optimizer_tensors)
        tensors["rng/torch"] = torch.get_rng_state()
        tensors.update({f"adapter/{k}": v.detach().cpu().contiguous() for k, v in adapter[0].items()})
        state = {"progress": progress, "history": history, "scheduler": scheduler.state_dict(), "numpy_rng": rng_state,
                 "optimizer": optimizer_plain, "scaler": scaler.state_dict() if scaler is not None else None,
                 "adapter": adapter[1]}
        try:
            target = self._write(name, tensors, state, is_best)
        except Exception as exc:  # noqa: BLE001 — an OS refusal becomes one sentence; anything else is re-raised
            failure = environment_failure(exc, f"write checkpoint {name}", self.folder / name)
            if failure is None:
                raise
            last = self.pointer().get("last")
            kept = (f"the previous checkpoint ({last}) is intact: free some space and continue with "
                    f"--model_resume_path {self.folder.parent}") if last else "no earlier checkpoint was written"
            raise EnvironmentFailure(f"{failure}; {kept}") from None
        self.seconds += time.perf_counter() - started
        return target

    def _write(self, name: str, tensors: dict, state: dict, is_best: bool) -> Path:
        """Write to a temporary folder, rename it into place, then move the pointer; on failure the temporary files
        go and the pointer still names the previous checkpoint."""
        from safetensors.torch import save_file

        target, tmp = self.folder / name, self.folder / f".{name}.tmp"
        pointer_tmp = self.folder / (POINTER + ".tmp")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            save_file(tensors, str(tmp / "tensors.safetensors"))
            (tmp / "state.json").write_text(json.dumps(state))
            _fsync_tree(tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            pointer = self.pointer()
            pointer["last"] = name
            if is_best or "best" not in pointer:
                pointer["best"] = name
            _write_json_atomic(self.folder / POINTER, pointer)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            pointer_tmp.unlink(missing_ok=True)
            raise
        for old in self.folder.iterdir():  # keep the last and the best only
            if old.is_dir() and old.name not in (pointer["last"], pointer["best"]):
                # renamed out of the way first (one atomic step), then deleted: a run killed while deleting leaves a
                # hidden folder no resume reads, never a step-N folder missing half its files
                doomed = old if old.name.startswith(".") else old.rename(self.folder / f".{old.name}.old")
                shutil.rmtree(doomed, ignore_errors=True)
        return target


def _read(folder: Path, name: str) -> tuple[dict, dict]:
    """(tensors, state) of one checkpoint folder; raises when it is missing or unreadable."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / name / "tensors.safetensors"))
    state = json.loads((folder / name / "state.json").read_text())
    missing = [k for k in ("progress", "history", "scheduler", "numpy_rng", "optimizer", "scaler") if k not in state]
    if missing or "rng/torch" not in tensors:
        raise ValueError(f"state.json lacks {', '.join(missing) or 'the torch RNG state'}")
    return tensors, state


def _damaged(exc: BaseException) -> bool:
    """A read failure that means a damaged or missing checkpoint file (not a bug in this module)."""
    return isinstance(exc, (OSError, ValueError, KeyError)) or type(exc).__name__ == "SafetensorError"


def load(folder: Path, which: str = "last") -> dict | None:
    """The checkpoint named `which` in the pointer, as tensors and state; None when there is none. When the last
    is unreadable the best (the other kept) is used instead, with a warning; when no usable one remains, or the best
    weights are unreadable, it is one sentence (TuneforkError)."""
    folder = Path(folder)
    path = folder / POINTER
    if not path.is_file():
        return None
    try:
        pointer = json.loads(path.read_text())
        names = [pointer[which], *(n for n in (pointer["last"], pointer["best"]) if n != pointer[which])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TuneforkError(f"{path}: damaged ({first_line(exc)}); the run cannot be resumed, start it again") from None
    problems = []
    for name in dict.fromkeys(names):
        try:
            tensors, state = _read(folder, name)
        except Exception as exc:  # noqa: BLE001 — only damage is caught, see `_damaged`
            if not _damaged(exc):
                raise
            problems.append(f"{name}: {first_line(exc)}")
            continue
        if problems:
            log.warning("checkpoint %s is damaged (%s); resuming from %s, the other kept checkpoint",
                        folder / names[0], problems[0].split(": ", 1)[1], name)
        return _assemble(folder, pointer, name, tensors, state)
    raise TuneforkError(f"{folder}: no checkpoint can be read ({'; '.join(problems)}); the run cannot be resumed, "
                        f"start it again")


def _assemble(folder: Path, pointer: dict, name: str, tensors: dict, state: dict) -> dict:
    best = tensors
    if pointer["best"] != name:
        try:
            best, _ = _read(folder, pointer["best"])
        except Exception as exc:  # noqa: BLE001
            if not _damaged(exc):
                raise
            raise TuneforkError(f"{folder / pointer['best']}: the best checkpoint is damaged ({first_line(exc)}); "
                                f"the run cannot be resumed with its best weights, start it again") from None
    return {
        "model": {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")},
        "best_model": {k[len("model/"):]: v for k, v in best.items() if k.startswith("model/")},
        "optimizer": _unflatten_optimizer(tensors, state["optimizer"]),
        "torch_rng": tensors["rng/torch"],
        "adapter": ({k[len("adapter/"):]: v for k, v in tensors.items() if k.startswith("adapter/")}, state.get("adapter", {})),
        **{k: state[k] for k in ("progress", "history", "scheduler", "numpy_rng", "scaler")},
    }
