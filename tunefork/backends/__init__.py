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
