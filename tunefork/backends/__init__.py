"""Where training runs: this process (`backend.type: local`, the default) or a Ray cluster (`ray`).

Everything Ray lives in this package and is imported only when a config asks for it, so `import tunefork` and the
command line never import ray. These functions are what `api.Model.train` calls; for the local backend each is the
plain single-process answer.

    session      join or start the cluster for the length of one run
    file_set     a dataset given as a folder or glob (read by Ray Data, `ray_data`)
    workers      how many workers, with which resources (`cluster`)
    hardware     the machine the plan is made for: the workers'
    fit          Ray Train's TorchTrainer over `training.loop.fit` on every worker (`ray_train`, `ray_worker`)
    resume_point a stopped Ray run's last checkpoint (Ray Train restores it when the run is launched again)
    on_ray       whether predict / evaluate run on Ray Data workers (`ray_predict`), and with which backend section
"""

from __future__ import annotations

import contextlib
import importlib.util

from tunefork.errors import TuneforkError


def _is_ray(config) -> bool:
    return config.backend.type == "ray"


def _require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        raise TuneforkError("backend.type: ray needs Ray: pip install 'tunefork[ray]'")


def session(config):
    if not _is_ray(config):
        return contextlib.nullcontext()
    _require_ray()
    from tunefork.backends import cluster

    return cluster.session(config.backend)


def file_set(config, dataset) -> list[str] | None:
    """The files of a dataset given as a folder or glob (read with Ray Data); None for one file or a frame."""
    from tunefork.backends import ray_data

    files = ray_data.file_set(dataset)
    if files is not None and not _is_ray(config):
        raise TuneforkError(f"{dataset}: a folder or glob of files is read in parallel by Ray Data; set backend.type: "
                            f"ray (or give a single file)")
    return files


def workers(config):
    if not _is_ray(config):
        from tunefork.plan import LocalWorkers

        return LocalWorkers()
    from tunefork.backends import cluster

    return cluster.workers(config.backend)


def hardware(config, workers):
    from tunefork import hardware as hardware_mod

    if not _is_ray(config):
        return hardware_mod.detect()
    from tunefork.backends import cluster

    return cluster.worker_hardware(workers.use_gpu)


def resume_point(config, run_dir) -> dict | None:
    """A Ray run's last checkpoint, when a local-format one is not there (Ray Train restores it on relaunch)."""
    if not _is_ray(config):
        return None
    from tunefork.backends import ray_train

    return ray_train.resume_point(config.backend, run_dir)


def fit(model, prepared, config, plan, seed: int, *, report, run_dir, workers):
    """Ray: (History, distributed facts for efficiency.json)."""
    from tunefork.backends import ray_train

    return ray_train.fit(model, prepared, config, plan, seed, report=report, run_dir=run_dir, workers=workers)


def on_ray(config, dataset, choice: str | None = None):
    """The Ray backend section to predict or evaluate `dataset` with (`ray_predict`), or None to read it here as one
    table. `choice` is the command line's --backend; without it a folder or glob goes to Ray when the model's config
    says backend.type: ray, and one file stays in this process."""
    from tunefork.backends import ray_data

    files = ray_data.file_set(dataset)
    if choice == "local" or (choice is None and not _is_ray(config)):
        if files is not None:
            how = "pass --backend ray" if choice else "set backend.type: ray in the model's config (or --backend ray)"
            raise TuneforkError(f"{dataset}: a folder or glob of files is predicted by Ray Data workers; {how}")
        return None
    if choice is None and files is None:
        return None
    _require_ray()
    if _is_ray(config):
        return config.backend
    from tunefork.config.backend import RayBackend

    return RayBackend(type="ray")


def predict_files(model, dataset, backend):
    """Ray: one frame of predictions in input order; `model` is a model folder or a Fitted model."""
    from tunefork.backends import ray_predict

    return ray_predict.predict(model, dataset, backend)


def evaluate_files(model, dataset, backend):
    """Ray: (statistics, predictions), the metrics computed once over every row."""
    from tunefork.backends import ray_predict

    return ray_predict.evaluate(model, dataset, backend)
