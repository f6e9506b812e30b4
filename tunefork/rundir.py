"""The run directory, for every model type: `results/<experiment>_<model>[_N]/` from its creation to its final state.

    resolved_config.yaml   the config with every default, and the plan (each decision with its reason)
    description.json       versions, config, data fingerprints, rows per split, seed, what may run remote code
    checkpoints/           while training: the last and the best checkpoint (`training.checkpoint`)
    model/                 the final state: present only once the run finished (written whole, then renamed)
    training_statistics.json, efficiency.json, report.html

Its name is reserved by creating it (`new`: mkdir without exist_ok, the next `_N` on FileExistsError), so two runs
started together never share one; the experiment and model names must be plain folder names (`check_names`). A run
directory is created before training — so checkpoints live inside it from the first evaluation — and is
finished in one place: `RunDirectory.finish`. A directory without `model/` is a run that stopped; `resume` reopens
it, after checking the data and the config are the run's own.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
from pathlib import Path

import yaml

from tunefork.config.features import is_transformer
from tunefork.errors import DataError, TuneforkError

DESCRIPTION, RESOLVED = "description.json", "resolved_config.yaml"


def check_names(experiment_name: str, model_name: str) -> None:
    """Both names are one folder name inside output_directory: a separator or '..' would put the run elsewhere."""
    for key, value in (("experiment_name", experiment_name), ("model_name", model_name)):
        text = str(value)
        if not text or any(bad in text for bad in ("/", "\\", "..", "\0")):
            raise TuneforkError(f"{key} {text!r}: must be a plain folder name (no '/', '\\' or '..'), as the run "
                                "directory is made inside output_directory")


def reserve(base: Path, suffix: str = "", *, make) -> Path:
    """The first of `<base><suffix>`, `<base>_1<suffix>`, `<base>_2<suffix>`, ... (Ludwig's naming) that `make`
    creates. `make` must fail with FileExistsError when the path exists (mkdir without exist_ok, open with O_EXCL):
    testing, then creating, would let two processes started together both take the same name."""
    n = 0
    while True:
        candidate = base.with_name(f"{base.name}_{n}{suffix}" if n else f"{base.name}{suffix}")
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            n += 1


def new(output_directory: str | Path, experiment_name: str, model_name: str) -> Path:
    """The first free `<experiment>_<model>`, `<experiment>_<model>_1`, ..., created (so it is this run's alone)."""
    check_names(experiment_name, model_name)
    base = Path(output_directory) / f"{experiment_name}_{model_name}"
    base.parent.mkdir(parents=True, exist_ok=True)
    return reserve(base, make=Path.mkdir)


def output_file(directory: str | Path, name: str, overwrite: bool = False, folder: bool = False) -> Path:
    """Where `predict` / `evaluate` write `name` (say predictions.csv, or a `folder` of parts) in `directory`: that
    path with `overwrite`, else the first free one by the run directory's `_N` rule (predictions_1.csv, ...), created
    empty so that no earlier result, and no concurrent command's, is ever written over."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if overwrite:
        return path
    if folder:
        return reserve(path, make=Path.mkdir)
    return reserve(path.with_name(path.stem), path.suffix,
                   make=lambda p: os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)))


def _clean(value):
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, allow_nan=False))
    tmp.replace(path)


def write_yaml(path: Path, data) -> None:
    path.write_text(yaml.safe_dump(_clean(data), sort_keys=False, allow_unicode=True))


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("tunefork", "torch", "transformers", "peft", "tokenizers", "safetensors", "pydantic"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = None
    return out


def remote_code(config) -> dict[str, bool]:
    """Where the config lets model code from a folder or the hub run: {config path: bool}, one shape for every model
    type."""
    if config.model_type == "llm":
        return {"base_model": config.trust_remote_code}
    return {f"input_features.{f.name}.encoder": f.encoder.trust_remote_code
            for f in config.input_features if is_transformer(f)}


class RunDirectory:
    """One run's folder: created (or reopened to resume), filled with checkpoints while training, then finished."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @classmethod
    def create(cls, output_directory, experiment_name: str, model_name: str, config_dict: dict, plan,
               fingerprints: dict, rows: dict, seed: int, remote: dict) -> RunDirectory:
        path = new(output_directory, experiment_name, model_name)  # created: reserved for this run alone
        write_yaml(path / RESOLVED, {"config": config_dict, "plan": plan.to_dict()})
        write_json(path / DESCRIPTION, {"versions": versions(), "config": config_dict, "dataset_fingerprints": fingerprints,
                                        "rows": rows, "random_seed": seed, "trust_remote_code": remote})
        return cls(path)

    # ------------------------------------------------------------------------------------------------ resuming
    @classmethod
    def stopped(cls, path) -> RunDirectory:
        """A run directory that stopped before it finished; refused when it is not one."""
        run = cls(Path(path))
        if not (run.path / DESCRIPTION).is_file():
            raise TuneforkError(f"{run.path}: not a tunefork run directory (no {DESCRIPTION}) to resume")
        if (run.path / "model").is_dir():
            raise TuneforkError(f"{run.path}: this run already finished (model/ is there); nothing to resume")
        return run

    def description(self) -> dict:
        return json.loads((self.path / DESCRIPTION).read_text())

    def check_same_data(self, fingerprints: dict) -> None:
        recorded = self.description()["dataset_fingerprints"]
        if recorded != fingerprints:
            changed = sorted(k for k in set(recorded) | set(fingerprints) if recorded.get(k) != fingerprints.get(k))
            raise DataError(f"{self.path}: the {', '.join(changed)} data differ from the run being resumed; pass the same data")

    def resumed(self, config_dict: dict, plan, changed: dict) -> None:
        """Record a resume, so the run's records do not contradict each other: description.json's config becomes the
        one the run continues with, and its `resumed` list gains the keys that changed ({path: {from, to}}, the safe
        ones `tunefork.resume` lets through; empty when none did); resolved_config.yaml gets that config and plan."""
        description = self.description()
        description["config"] = config_dict
        description.setdefault("resumed", []).append(
            {"changed": {path: {"from": old, "to": new} for path, (old, new) in changed.items()}})
        write_json(self.path / DESCRIPTION, description)
        write_yaml(self.path / RESOLVED, {"config": config_dict, "plan": plan.to_dict()})

    # ------------------------------------------------------------------------------------------------ the end
    def finish(self, fitted, statistics: dict, efficiency: dict, report=None, *, keep_statistics: bool = True,
               keep_description: bool = True) -> None:
        """The final state: model/ (written whole, then renamed into place), the records, the report; the
        checkpoints go, as model/ now holds the run's result. Without `keep_statistics` no training_statistics.json
        is written; without `keep_description` description.json (needed only to resume) goes too (Ludwig's
        skip_save_training_statistics and skip_save_training_description)."""
        fitted.save(self.path / "model")
        if keep_statistics:
            write_json(self.path / "training_statistics.json", statistics)
        if not keep_description:
            (self.path / DESCRIPTION).unlink(missing_ok=True)
        write_json(self.path / "efficiency.json", efficiency)
        if report is not None:
            report.write(self.path / "report.html")
        shutil.rmtree(self.checkpoints, ignore_errors=True)


def config_of_run(run) -> dict:
    """The config a run directory was trained with (for resuming without -c)."""
    description = Path(run) / DESCRIPTION
    if not description.is_file():
        raise TuneforkError(f"{run}: not a tunefork run directory (no {DESCRIPTION})")
    return json.loads(description.read_text())["config"]
