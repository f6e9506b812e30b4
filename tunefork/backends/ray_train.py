"""The driver's side of a Ray run: a `TorchTrainer` over `ray_worker.train_function`, then the result brought home.

Ray Train owns the workers, the process group (gloo on CPU, NCCL on GPU), checkpoint persistence and restarts
(`FailureConfig`); tunefork owns what each worker computes. The final weights come back as safetensors through Ray's
storage (the only path that also works when rank 0 runs on another node) and are loaded into the driver's own model,
so the run directory's `model/` is written by the same `models.folder` code as a local run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from tunefork.backends import cluster, ray_worker
from tunefork.errors import TuneforkError

log = logging.getLogger("tunefork.ray")
FAULT = "TUNEFORK_RAY_FAULT"  # test-only fault injection, see ray_worker
STORAGE_NAME = "ray_train"


def fit(model, prepared, config, plan, seed: int, *, report, run_dir: Path | None, workers):
    """Train on the cluster; `model` (the driver's, built with the same seed) receives the final weights. `prepared`
    is the recipe's preprocessed data (its tables go to the object store once). Returns (History, efficiency facts
    of the distributed run)."""
    import dataclasses

    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from safetensors.torch import load_file

    from tunefork import config as config_mod
    from tunefork.training.history import History

    backend = config.backend
    spec = {
        "config": config_mod.to_dict(config), "plan": plan, "seed": seed,
        "tables": ray.put(prepared.tables),  # once, in the object store: every worker on a node maps the same copy
        # the rest of what preprocessing made (metadata, facts); tokenizers stay here: workers get token ids
        "prepared": dataclasses.replace(prepared, tables={}, tokenizers=None),
        "initial_checksum": ray_worker.initial_checksum(model), "fault": os.environ.get(FAULT),
        "launched": time.time(),
    }
    storage, name, temporary = _storage(backend, run_dir)
    trainer = TorchTrainer(
        ray_worker.train_function,
        train_loop_config=spec,
        scaling_config=ScalingConfig(num_workers=workers.count, use_gpu=workers.use_gpu,
                                     resources_per_worker=workers.resources),
        torch_config=TorchConfig(backend="nccl" if workers.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=backend.trainer.max_failures),
            # the newest is what a restart resumes from; one more survives a crash in the middle of persisting it
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),  # not a line per report; tunefork prints each evaluation
        ),
    )
    try:
        result = _fit(trainer, run_dir)
        with result.checkpoint.as_directory() as folder:
            folder = Path(folder)
            final = json.loads((folder / ray_worker.RESULT).read_text())
            if "diverged" in final:  # no weights to bring home: the checkpoints kept so far, and the reason
                _diverged(final, folder, run_dir)
            weights = load_file(str(folder / ray_worker.WEIGHTS))
    finally:
        if temporary:
            shutil.rmtree(storage, ignore_errors=True)
    model.load_state_dict(weights, strict=False)  # trainable weights and buffers, as a local run's best state
    history = History.from_state(final["history"])
    _replay(final["events"], history, report)
    if not temporary:  # the run finished: model/ holds its result, as a local run drops its checkpoints
        shutil.rmtree(Path(storage) / name, ignore_errors=True)
    timing = final["timing"]
    return history, {
        "backend": "ray", "strategy": backend.trainer.effective_strategy.type, "num_workers": workers.count,
        "use_gpu": workers.use_gpu, "resources_per_worker": workers.resources, "cluster": cluster.STARTUP["cluster"],
        "ray_startup_seconds": round(cluster.STARTUP["seconds"], 3),
        "launch_to_first_step_seconds": round(timing["first_step"] - timing["launched"], 3) if timing["first_step"] else None,
        "first_step_unix": timing["first_step"], "restarts": final["restarts"], "workers": final["workers"],
    }


def _diverged(final: dict, folder: Path, run_dir: Path | None) -> None:
    """Raise the workers' DivergedError on the driver, with rank 0's kept checkpoints copied into the run directory
    (where `runner` names the best one, as for a local run)."""
    from tunefork.errors import DivergedError

    kept = folder / "checkpoints"
    if run_dir is not None and kept.is_dir() and any(kept.iterdir()):
        shutil.copytree(kept, Path(run_dir) / "checkpoints", dirs_exist_ok=True)
    raise DivergedError(final["diverged"], best=final["best"])


def _storage(backend, run_dir: Path | None) -> tuple[str, str, bool]:
    """(storage_path, run name, temporary). Ray Train resumes whatever it finds under the same storage path and name:
    right for `--model_resume_path` and after a lost worker, wrong for a new run — so the name belongs to the run
    directory (new for every run), and a run without one gets a fresh temporary folder."""
    if run_dir is None:
        return tempfile.mkdtemp(prefix="tunefork-ray-"), STORAGE_NAME, True
    run_dir = Path(run_dir).resolve()
    if backend.ray.storage_path:  # shared by many runs: the name says which run directory it belongs to
        digest = hashlib.blake2b(str(run_dir).encode(), digest_size=4).hexdigest()
        return backend.ray.storage_path, f"{run_dir.name}-{digest}", False
    return str(run_dir), STORAGE_NAME, False


def resume_point(backend, run_dir: Path) -> dict | None:
    """Something to resume when a Ray run stopped (its driver killed, `max_failures` spent): Ray Train restores the
    last checkpoint itself when the run is launched again under the same storage path and name."""
    storage, name, _ = _storage(backend, run_dir)
    folder = f"{storage.rstrip('/')}/{name}"
    if "://" not in storage and not any(Path(folder).glob("checkpoint_*")):
        return None
    return {"ray_storage": folder}


def _fit(trainer, run_dir: Path | None):
    from ray.train import TrainingFailedError, WorkerGroupError

    try:
        return trainer.fit()
    except WorkerGroupError as exc:
        failures = exc.worker_failures or {}
        for failure in failures.values():
            cause = failure if isinstance(failure, TuneforkError) else getattr(failure, "cause", None)
            if isinstance(cause, TuneforkError):
                raise TuneforkError(str(cause)) from None
        rank, failure = next(iter(sorted(failures.items())), (None, exc))
        again = f"; continue it with --model_resume_path {run_dir}" if run_dir is not None else ""
        raise TuneforkError(f"training failed on the Ray cluster after backend.trainer.max_failures restarts (worker "
                            f"{rank}: {str(failure).strip().splitlines()[0]}){again}") from exc
    except TrainingFailedError:
        raise


def _replay(events: list, history, report) -> None:
    """The workers' per-step losses and evaluations, told to the driver's console, HTML report and trackers in order."""
    from tunefork.training.history import History

    if report is None:
        return
    evaluations = 0
    for event in events:
        if event[0] == "step" and hasattr(report, "step"):
            report.step(*event[1:])
        elif event[0] == "evaluation":
            _, epoch, step, scores, improved = event
            evaluations += 1
            seen = History(history.evaluate_training_set, evaluations=history.evaluations[:evaluations])
            report.evaluation(epoch, step, scores, seen, improved)
