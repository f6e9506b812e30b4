"""The Ray cluster a run trains on: joined (`backend.ray.address`, else `RAY_ADDRESS`) or started for the run alone,
and what it offers — which decides the workers, their resources and the hardware the plan is made for."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time

from tunefork.errors import TuneforkError

log = logging.getLogger("tunefork.ray")
STARTUP = {"seconds": 0.0, "cluster": None}  # how the current run reached its cluster (for efficiency.json)


@contextlib.contextmanager
def session(backend):
    """Ray for the length of one run. A Ray already initialised in this process (a notebook, a test suite) is used as
    it is and left running; otherwise join the address, or start a local cluster sized to this machine (Ray's own
    defaults: every CPU and GPU) and stop it when the run ends, also on an error."""
    import ray

    if ray.is_initialized():
        STARTUP.update(seconds=0.0, cluster="the Ray instance already running in this process")
        yield
        return
    address = backend.ray.address or os.environ.get("RAY_ADDRESS")
    started = time.perf_counter()
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at '{address}'" if address else "on this machine"
        raise TuneforkError(f"backend.ray: cannot reach a Ray cluster {where} ({str(exc).splitlines()[0]})") from None
    STARTUP.update(seconds=time.perf_counter() - started,
                   cluster=f"joined {address}" if address else "a local cluster started for this run")
    try:
        yield
    finally:
        ray.shutdown()


@dataclasses.dataclass(frozen=True)
class Workers:
    count: int
    use_gpu: bool
    resources: dict[str, float]  # what each worker reserves
    reasons: dict[str, str]


def workers(backend, offered: dict | None = None) -> Workers:
    """How many workers, with what, on this cluster (`offered`: its resources, read from Ray when not given) —
    refused up front when a cluster started here cannot hold them (Ray would otherwise wait forever for resources
    nobody has)."""
    if offered is None:
        import ray

        offered = ray.cluster_resources()
    trainer = backend.trainer
    gpus, cpus = int(offered.get("GPU", 0)), offered.get("CPU", 0)
    reasons = {}
    if trainer.use_gpu is None:
        use_gpu = gpus > 0
        reasons["use_gpu"] = f"auto: the cluster has {gpus} GPU(s)"
    else:
        use_gpu = trainer.use_gpu
        reasons["use_gpu"] = "backend.trainer.use_gpu"
    if use_gpu and gpus == 0:
        raise TuneforkError("backend.trainer.use_gpu is true, but the Ray cluster has no GPU")
    if trainer.num_workers is not None:
        count, reasons["num_workers"] = trainer.num_workers, "backend.trainer.num_workers"
    elif use_gpu:
        count, reasons["num_workers"] = gpus, "auto: one worker per GPU in the cluster"
    else:
        count, reasons["num_workers"] = 1, "auto: one CPU worker (set backend.trainer.num_workers for more)"
    if trainer.resources_per_worker:
        resources, reasons["resources_per_worker"] = dict(trainer.resources_per_worker), "backend.trainer.resources_per_worker"
    else:
        # Ludwig's rule: CPU workers share the cluster's CPUs, so one worker computes with every core as a local run does
        share = max(1, int(cpus // count)) if not use_gpu else 1
        resources = {"CPU": share, **({"GPU": 1} if use_gpu else {})}
        reasons["resources_per_worker"] = (f"auto: {cpus:g} CPUs / {count} worker(s)" if not use_gpu
                                           else "auto: one GPU and one CPU per worker")
    for name, amount in resources.items():
        need, have = amount * count, offered.get(name, 0)
        if need > have:
            message = (f"backend.trainer: {count} worker(s) × {name} {amount:g} need {need:g} {name}, and the Ray "
                       f"cluster has {have:g}")
            if STARTUP["cluster"] == "a local cluster started for this run":
                raise TuneforkError(message)
            log.warning("%s; waiting for the cluster to grow (autoscaling)", message)
    return Workers(count, use_gpu, resources, reasons)


def worker_hardware(use_gpu: bool):
    """The hardware the plan is made for: the workers'. CPU workers are taken to be like this machine; GPU workers
    are asked (one short task on a GPU), as the driver often runs on a head node without one."""
    import ray

    from tunefork import hardware

    here = hardware.detect()
    if not use_gpu:
        return dataclasses.replace(here, device="cpu", cuda_bf16=False)
    if here.device == "cuda":
        return here
    return ray.get(ray.remote(num_gpus=1, num_cpus=0)(_detect).remote())


def _detect():
    from tunefork import hardware

    return hardware.detect()
