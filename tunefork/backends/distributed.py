"""What changes when `training.loop.fit` runs as one of N torch.distributed processes (a Ray Train worker).

`fit` calls the same hooks in one process (`loop.Single`, all identities) and here. The design rule is parity: with
the same seed, N workers with `batch_size` B take the very optimizer steps of one process with batch N×B.

- Every rank draws the same global batch order (same seed, batch N×B) and computes only its slice of each batch
  (`shard`). Its loss is weighted by its share of the batch's rows, so the gradient the strategy averages across
  ranks is exactly the mean over the global batch — also for a last batch that does not divide evenly.
- Evaluation is sharded by batches and the per-row outputs are gathered (`gather`), so metrics are computed from the
  same rows and predictions as in one process.
- The strategy is real torch: DDP (`DistributedDataParallel`) or FSDP2 (`fully_shard` on each transformer block,
  then on the root), wrapped here rather than by Ray's `prepare_model`, which refuses FSDP on CPUs (stack facts §5).
- State dicts leave as full tensors under the unwrapped module's names, so a checkpoint or a saved model is the
  one a local run writes.

Imports torch only; Ray is the launcher (`ray_worker`), not a dependency of the arithmetic here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from tunefork.training.loop import trainable_state


def transformer_blocks(hf_models: list) -> list[torch.nn.Module]:
    """The modules Hugging Face itself declares indivisible (`_no_split_modules`: BertLayer, LlamaDecoderLayer, ...)
    in every Hugging Face model the task names: FSDP's units, so one block's weights are whole only while it computes."""
    found = []
    for transformer in hf_models:
        base = transformer.get_base_model() if hasattr(transformer, "get_base_model") else transformer
        names = set(getattr(base, "_no_split_modules", None) or ())
        found += [m for m in base.modules() if type(m).__name__ in names]
    return found


class Distributed:
    """The hooks of `training.loop.fit` for rank `rank` of `world`; `strategy` is the config's ddp / fsdp section."""

    def __init__(self, rank: int, world: int, strategy, device: torch.device, precision: str):
        self.rank, self.world, self.strategy, self.device, self.precision = rank, world, strategy, device, precision
        self.fsdp = strategy.type == "fsdp"
        self.cuda = device.type == "cuda"
        self.model = self.inner = None

    # ------------------------------------------------------------------------------------------------ the model
    def wrap(self, model, hf_models: list):
        self.inner = model  # names, the evaluation forward under DDP, and the module the caller keeps
        # `fit` has just seeded every rank alike; dropout must draw other masks for other rows, as one process does
        # for the rows of one batch (rank 0 keeps the seed, so a one-worker run is the local run)
        torch.manual_seed(torch.initial_seed() + self.rank)
        if self.fsdp:
            self.model = self._fully_shard(model, transformer_blocks(hf_models))  # also with one worker: the mixed-precision path on one GPU
        elif self.world == 1:
            self.model = model  # nothing to average: a one-worker run steps as fast as a local one
        else:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: a transformer's pooler (or an unused head input) gets no gradient, and DDP
            # would otherwise wait for it forever. No buffer sync each forward: our buffers (position ids) never change.
            self.model = DistributedDataParallel(model, device_ids=[self.device.index] if self.cuda else None,
                                                 find_unused_parameters=True, forward_sync_buffers=False)
        return self.model

    def _fully_shard(self, model, blocks: list):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.world,))
        # FSDP's own mixed precision: weights are all-gathered in bf16/fp16 (half the traffic), gradients are
        # reduced in fp32 so the average over ranks loses nothing; the sharded master weights stay fp32.
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
        reshard = self.strategy.reshard_after_forward
        # offload: sharded weights, gradients and optimizer state live in CPU memory, copied in per block
        offload = CPUOffloadPolicy(pin_memory=self.strategy.pin_memory) if self.strategy.offload else OffloadPolicy()
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard, offload_policy=offload)
        # the root holds what is left (embeddings of unlisted models, combiner, heads); it is needed again at once by
        # backward, so it is not resharded after forward
        return fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False, offload_policy=offload)

    def scaler(self, precision: str):
        if precision != "fp16":
            return None
        if self.fsdp:  # sharded gradients: the inf/NaN check must agree on every rank before a step is skipped
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            return ShardedGradScaler("cuda")
        return torch.amp.GradScaler("cuda")

    def sync_gradients(self, model, sync: bool) -> None:
        """Communicate gradients only on the micro-batch that ends an accumulation (the others just add up locally)."""
        if self.fsdp:
            model.set_requires_gradient_sync(sync)
        elif self.world > 1:
            model.require_backward_grad_sync = sync  # what DDP's `no_sync()` context sets, without re-nesting fit

    # ------------------------------------------------------------------------------------------------ the data
    def shard(self, index: np.ndarray) -> tuple[np.ndarray, bool]:
        """This rank's rows of a global batch (the loop weights them by their share of the batch's units). A rank left
        without rows (a batch smaller than the world) still has to join the collectives: it computes one row that
        does not count."""
        mine = np.array_split(index, self.world)[self.rank]
        if len(mine) == 0:
            return index[:1], False
        return mine, True

    def sum(self, value: float) -> float:
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return tensor.item()

    def gather_objects(self, value) -> list:
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def merged(self, task, accumulator):
        """Every rank's accumulator merged (in rank order, so every rank computes identical metrics and takes the same
        early-stopping decision)."""
        return accumulator.merge(self.gather_objects(accumulator.state()))

    def evaluation_model(self, model):
        """FSDP evaluates through the sharded model (its forward gathers the weights); DDP the plain module."""
        return self.model if self.fsdp else self.inner

    def batches(self, order: list[np.ndarray]):
        """Each rank scores every world-th batch of the evaluation order. FSDP's forward all-gathers weights, so every
        rank must run as many forwards: a rank short of a batch runs a stand-in whose outputs do not count. DDP
        evaluates the plain module and needs no partner."""
        mine = order[self.rank :: self.world]
        rounds = math.ceil(len(order) / self.world) if self.fsdp else len(mine)
        for k in range(rounds):
            yield (mine[k], True) if k < len(mine) else (order[0], False)

    # ------------------------------------------------------------------------------------------------ state
    def state(self, model) -> dict[str, torch.Tensor]:
        """Trainable parameters and buffers as full tensors under the unwrapped names (a collective under FSDP).
        On a GPU only rank 0 receives them (gathered straight to CPU memory); the other ranks get {}."""
        if not self.fsdp:
            return trainable_state(self.inner)  # DDP replicas are identical: no communication
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # cpu_offload only on a GPU: on CPU the FSDP1 variant of this gather segfaults (stack facts §5) and there is
        # nothing to offload from
        options = StateDictOptions(full_state_dict=True, cpu_offload=self.cuda, ignore_frozen_params=True)
        self._resharded()
        full = get_model_state_dict(self.model, options=options)
        if full:  # non-persistent buffers (position ids) are not in a state dict, but a local checkpoint has them
            for name, buffer in self.inner.named_buffers():
                full.setdefault(name, buffer.cpu())
        return {k: v.detach().clone() for k, v in full.items()}  # unsharded buffers come back as the live tensors

    def load(self, model, state: dict) -> None:
        if not self.fsdp:
            self.inner.load_state_dict(state, strict=False)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=self.cuda)
        self._resharded()
        set_model_state_dict(self.model, state, options=options)

    def optimizer_state(self, optimizer) -> dict:
        """The optimizer state in `torch.optim`'s own layout (parameters numbered in optimizer order, full tensors),
        exactly what a one-process run checkpoints."""
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(self.model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=self.cuda))
        if not full:  # a GPU rank other than 0
            return {}
        number = {name: i for i, name in enumerate(self._optimized_names())}
        groups = [{**g, "params": [number[n] for n in g["params"]]} for g in full["param_groups"]]
        return {"state": {number[n]: s for n, s in full["state"].items()}, "param_groups": groups}

    def load_optimizer(self, optimizer, state: dict) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = self._optimized_names()
        full = {"state": {names[int(i)]: s for i, s in state["state"].items()},
                "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
        # not strict: a parameter that never had a gradient (a pooler) has no state yet, as in one process
        set_optimizer_state_dict(self.model, optimizer, full, options=StateDictOptions(full_state_dict=True, strict=False))

    def _resharded(self) -> None:
        """Every FSDP unit back to its shards. The root is not resharded after forward (backward needs it at once),
        so after an evaluation its parameters are the gathered plain tensors, and loading DTensor shards into them
        fails ('mixed torch.Tensor and DTensor')."""
        from torch.distributed.fsdp import FSDPModule

        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def _optimized_names(self) -> list[str]:
        # `fit` gives the optimizer the trainable parameters in `parameters()` order
        return [name for name, p in self.inner.named_parameters() if p.requires_grad]

    def _collective_device(self) -> torch.device:
        return self.device if self.cuda else torch.device("cpu")  # NCCL moves CUDA tensors only; gloo CPU ones
