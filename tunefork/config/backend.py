"""The `backend` section: where training runs — in this process (`local`, the default) or on a Ray cluster (`ray`).

Ludwig's keys, kept where they mean something here:

    backend:
      type: ray
      cache_dir: /shared/cache            # preprocessed data and embeddings
      trainer:                            # Ray Train
        strategy: fsdp                    # ddp | fsdp | {type: fsdp, reshard_after_forward: true} | deepspeed
        num_workers: 4
        use_gpu: true
        resources_per_worker: {CPU: 8, GPU: 1}
      processor: {type: ray}              # Ray Data reads a folder or glob of files (Ludwig's dask: refused)
      ray: {address: auto}                # join a running cluster (or RAY_ADDRESS); unset: a local one for the run

Ludwig's `deepspeed` strategy runs as the FSDP2 sharding of the same memory class (see DeepSpeedStrategy; the plan
says so). Its `dask` processor, `horovod` strategy and streaming `loader` windows have no counterpart here and are
refused by name rather than ignored.
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
    offload: bool = Field(False, description="Keep the sharded weights, gradients and optimizer state in CPU memory "
                          "(FSDP2's CPUOffloadPolicy; the optimizer steps on the CPU). Needs GPU workers.")
    pin_memory: bool = Field(False, description="Offloaded state in page-locked memory (faster copies); with offload.")

    @model_validator(mode="after")
    def _pin_with_offload(self):
        if self.pin_memory and not self.offload:
            raise ValueError("pin_memory pins offloaded state, and offload is false; set offload: true or remove it")
        return self


class Offload(Section):
    """DeepSpeed's `offload_optimizer` / `offload_param`."""

    device: Literal["cpu", "none"] = Field("cpu", description="Where to keep the offloaded state ('none': not offloaded).")
    pin_memory: bool = Field(False, description="Keep it in page-locked memory (faster copies to the GPU).")

    @model_validator(mode="before")
    @classmethod
    def _no_nvme(cls, data):
        if isinstance(data, dict) and data.get("device") == "nvme":
            raise ValueError("device nvme: FSDP2, which runs DeepSpeed configs here, offloads to CPU memory only; "
                             "write device: cpu")
        return data


class ZeroOptimization(Section):
    stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage: 3 shards weights, gradients and optimizer state; "
                                       "2 (and 1) gradients and optimizer state; 0 nothing (plain data parallel).")
    offload_optimizer: Offload | None = None
    offload_param: Offload | None = None


class DeepSpeedStrategy(Section):
    """Ludwig's DeepSpeed strategy, run as the FSDP2 sharding of the same memory class (DeepSpeed itself is not used):
    ZeRO-3 → full shard (weights resharded after forward), ZeRO-1/2 → gradients and optimizer state sharded, weights
    kept gathered between forward and backward, ZeRO-0 → DDP; an offload to CPU → FSDP2's CPU offload (weights,
    gradients and optimizer state in CPU memory). The plan prints and records the translation."""

    type: Literal["deepspeed"]
    zero_optimization: ZeroOptimization = ZeroOptimization()

    @property
    def offloaded(self) -> bool:
        zero = self.zero_optimization
        return any(o is not None and o.device == "cpu" for o in (zero.offload_optimizer, zero.offload_param))

    def translated(self):
        """The strategy that runs, and a sentence saying how it was derived."""
        zero = self.zero_optimization
        offload = " with CPU offload" if self.offloaded else ""
        if zero.stage == 0:
            if self.offloaded:
                raise ValueError("zero_optimization.offload_*: stage 0 shards nothing, so there is nothing to offload; "
                                 "set stage 2 or 3, or remove the offload")
            return DDPStrategy(), "DeepSpeed ZeRO-0 (no sharding) runs as DDP"
        fsdp = FSDPStrategy(reshard_after_forward=zero.stage == 3, offload=self.offloaded,
                            pin_memory=any(o is not None and o.pin_memory for o in (zero.offload_optimizer, zero.offload_param)))
        what = "full shard" if zero.stage == 3 else "gradients and optimizer state sharded, weights kept between " \
            "forward and backward"
        return fsdp, f"DeepSpeed ZeRO-{zero.stage}{offload} runs as FSDP2 ({what}{offload})"

    @model_validator(mode="before")
    @classmethod
    def _precision_is_the_trainers(cls, data):
        for key in ("fp16", "bf16"):
            if isinstance(data, dict) and key in data:
                raise ValueError(f"{key}: mixed precision is trainer.use_mixed_precision: true here (bf16 where the "
                                 f"hardware has it, else fp16, for any strategy); remove {key} and set that")
        return data

    @model_validator(mode="after")
    def _translates(self):
        self.translated()
        return self


Strategy = tagged(DDPStrategy, FSDPStrategy, DeepSpeedStrategy, default="ddp")


class RayTrainer(Section):
    """`backend.trainer`: how Ray Train runs the workers."""

    @property
    def effective_strategy(self):
        """The ddp / fsdp section that runs (a DeepSpeed one translated)."""
        return self.strategy.translated()[0] if self.strategy.type == "deepspeed" else self.strategy

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
