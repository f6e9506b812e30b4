"""The `backend` section: where training runs — in this process (`local`, the default) or on a Ray cluster (`ray`).

Ludwig's keys, kept where they mean something here:

    backend:
      type: ray
      cache_dir: /shared/cache            # preprocessed data and embeddings
      trainer:                            # Ray Train
        strategy: fsdp                    # ddp | fsdp | {type: fsdp, reshard_after_forward: true}
        num_workers: 4
        use_gpu: true
        resources_per_worker: {CPU: 8, GPU: 1}
      processor: {type: ray}              # Ray Data reads a folder or glob of files (Ludwig's dask: refused)
      ray: {address: auto}                # join a running cluster (or RAY_ADDRESS); unset: a local one for the run

Ludwig's `dask` processor, `horovod` / `deepspeed` strategies and streaming `loader` windows have no counterpart
here and are refused by name rather than ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from tunefork.sections import Section, tagged


class LocalBackend(Section):
    type: Literal["local"] = "local"
    cache_dir: str | None = Field(None, description="Where preprocessed data and embeddings are cached.")


class DDPStrategy(Section):
    """DistributedDataParallel: each worker holds the whole model; gradients are averaged (gloo on CPU, NCCL on GPU)."""

    type: Literal["ddp"] = "ddp"


class FSDPStrategy(Section):
    """FSDP2 (`torch.distributed.fsdp.fully_shard`): weights, gradients and optimizer state split across workers;
    each transformer block is gathered whole only while it computes. With `trainer.use_mixed_precision` the blocks
    are gathered in bf16 (fp16 on older GPUs) and gradients reduced in fp32."""

    type: Literal["fsdp"] = "fsdp"
    reshard_after_forward: bool = Field(
        True, description="Free a block's gathered weights after its forward (less memory, gathered again in backward).")


Strategy = tagged(DDPStrategy, FSDPStrategy, default="ddp")


class RayTrainer(Section):
    """`backend.trainer`: how Ray Train runs the workers."""

    strategy: Strategy = DDPStrategy()
    num_workers: PositiveInt | None = Field(None, description="Training workers; unset: one per GPU with use_gpu, else 1.")
    use_gpu: bool | None = Field(None, description="One GPU per worker; unset: true when the cluster has GPUs.")
    resources_per_worker: dict[str, float] | None = Field(
        None, description="Ray resources each worker reserves, e.g. {CPU: 4, GPU: 1} (Ray's names: CPU, GPU, memory).")
    max_failures: int = Field(
        3, ge=-1, description="Worker failures survived by restarting from the last checkpoint (-1: no limit).")

    @field_validator("resources_per_worker")
    @classmethod
    def _ray_resource_names(cls, value):
        for name, amount in (value or {}).items():
            # Ray's names are case-sensitive: a worker asking for `cpu` waits forever for a resource nobody has
            if name.upper() in ("CPU", "GPU") and name != name.upper():
                raise ValueError(f"'{name}': Ray's resource names are case-sensitive (did you mean '{name.upper()}'?)")
            if amount < 0:
                raise ValueError(f"'{name}': {amount} is negative; give 0 or more")
        return value


class RayProcessor(Section):
    """`backend.processor`: a dataset given as a folder or glob of Parquet / CSV files is read and tokenized by
    Ray Data in parallel (Ludwig's default here is Dask, which tunefork does not use)."""

    type: Literal["ray"] = "ray"
    parallelism: PositiveInt | None = Field(None, description="Read tasks (blocks); unset: Ray Data decides.")

    @model_validator(mode="before")
    @classmethod
    def _not_dask(cls, data):
        if isinstance(data, dict) and data.get("type") == "dask":
            raise ValueError("Ludwig's Dask processor is not used here: tunefork preprocesses with Ray Data (type: ray)")
        return data


class RayLoader(Section):
    """`backend.loader`: accepted as `fully_executed: true` only, which is what tunefork always does — the driver
    preprocesses once and every worker trains from those tables in the object store, not from a streaming window."""

    fully_executed: bool = True

    @model_validator(mode="before")
    @classmethod
    def _fully_executed_only(cls, data):
        if isinstance(data, dict):
            streaming = sorted(k for k in data if k != "fully_executed")
            if streaming or data.get("fully_executed", True) is not True:
                what = f"'{streaming[0]}'" if streaming else "fully_executed: false"
                raise ValueError(f"{what} configures Ludwig's streaming loader; tunefork's workers train from fully "
                                 f"preprocessed tables (remove backend.loader)")
        return data


class RayCluster(Section):
    """`backend.ray`: which cluster, and where Ray Train keeps checkpoints."""

    address: str | None = Field(
        None, description="Cluster to join ('auto', 'host:6379'); unset: RAY_ADDRESS, else a local "
                          "cluster sized to this machine that starts and stops with the run.")
    storage_path: str | None = Field(
        None, description="Where Ray Train persists checkpoints; on a multi-node cluster a shared folder or s3:// "
                          "path. Unset: the run directory.")


class RayBackend(Section):
    type: Literal["ray"]
    cache_dir: str | None = Field(None, description="Where preprocessed data and embeddings are cached.")
    trainer: RayTrainer = RayTrainer()
    processor: RayProcessor = RayProcessor()
    loader: RayLoader | None = None
    ray: RayCluster = RayCluster()


Backend = tagged(LocalBackend, RayBackend, default="local")
