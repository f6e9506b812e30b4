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


def preprocess_files(config, files: list[str], seed: int, tokenizers: dict):
    """(meta, {split: Table}, fingerprints) for a folder or glob of files, preprocessed by Ray Data."""
    from tunefork.backends import ray_data

    meta, tables = ray_data.preprocess(config, files, seed, tokenizers, config.backend.processor.parallelism)
    return meta, tables, {"files": ray_data.fingerprint(files)}


def workers(config):
    from tunefork.backends.cluster import Workers

    if not _is_ray(config):
        return Workers(1, False, {}, {})
    from tunefork.backends import cluster

    return cluster.workers(config.backend)


def hardware(config, workers):
    from tunefork import hardware as hardware_mod

    if not _is_ray(config):
        return hardware_mod.detect()
    from tunefork.backends import cluster

    return cluster.worker_hardware(workers.use_gpu)


def decide(plan, config, workers) -> None:
    """The backend's decisions, with their reasons, in the plan (and so in resolved_config.yaml)."""
    if not _is_ray(config):
        return
    from tunefork.backends import cluster

    trainer = config.backend.trainer
    plan.decide("backend", "ray", f"backend.type: ray ({cluster.STARTUP['cluster']})")
    plan.decide("strategy", trainer.strategy.type, "backend.trainer.strategy")
    for key in ("num_workers", "use_gpu", "resources_per_worker"):
        value = {"num_workers": workers.count, "use_gpu": workers.use_gpu, "resources_per_worker": workers.resources}[key]
        plan.decide(key, value, workers.reasons[key])
    _refuse_unsupported(config, plan)


def _refuse_unsupported(config, plan) -> None:
    strategy = config.backend.trainer.strategy.type
    if strategy != "fsdp":
        return
    if config.trainer.regularization_type and config.trainer.regularization_lambda:
        raise TuneforkError("trainer.regularization_type with backend.trainer.strategy fsdp: the penalty would be "
                            "taken over weight shards; use strategy ddp")
    for feature in config.input_features:
        if feature.type == "text" and getattr(feature.encoder.adapter, "type", None) == "adalora":
            raise TuneforkError(f"{feature.name}: AdaLoRA reallocates ranks from whole gradients, which FSDP shards; "
                                f"use backend.trainer.strategy ddp")


def resume_point(config, run_dir) -> dict | None:
    """A Ray run's last checkpoint, when a local-format one is not there (Ray Train restores it on relaunch)."""
    if not _is_ray(config):
        return None
    from tunefork.backends import ray_train

    return ray_train.resume_point(config.backend, run_dir)


def fit(model, tables: dict, config, meta: dict, plan, seed: int, *, report, run_dir, workers):
    """Ray: (History, distributed facts for efficiency.json)."""
    from tunefork.backends import ray_train

    return ray_train.fit(model, tables, config, meta, plan, seed, report=report, run_dir=run_dir, workers=workers)
