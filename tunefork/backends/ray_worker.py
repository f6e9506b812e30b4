"""What each Ray Train worker runs: the same `training.loop.fit` a local run calls, as one rank of a process group.

The driver preprocessed once and put the tables in the object store; every worker rebuilds the model with its recipe
(`tunefork.recipes`: a classifier or a causal LM) with the driver's seed (checked against the driver's initial weights), wraps it (DDP / FSDP), trains its shard of
every global batch and reports each evaluation to Ray Train with a checkpoint in tunefork's own safetensors format.
A worker lost mid-run (`FailureConfig.max_failures`) makes Ray restart the group; `ray.train.get_checkpoint()` then
hands back the last checkpoint and `fit` continues from it exactly as `--model_resume_path` does locally.

Test-only fault injection: `TUNEFORK_RAY_FAULT=<rank>:<step>:<marker file>` on the driver makes that rank SIGKILL
itself when it reaches that optimizer step, once (the marker file records that it happened).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

RESULT = "result.json"
WEIGHTS = "model.safetensors"
EVENTS = "events.json"
RNG = "rng.safetensors"  # every rank's torch RNG: each draws its own dropout masks


def train_function(spec: dict) -> None:
    import dataclasses

    import ray
    import ray.train
    import ray.train.torch
    import torch

    from tunefork import config as config_mod
    from tunefork import recipes
    from tunefork.backends.distributed import Distributed
    from tunefork.training.loop import fit

    entered = time.time()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config, plan, seed = config_mod.load(spec["config"]), spec["plan"], spec["seed"]
    tables = spec["tables"]
    prepared = dataclasses.replace(spec["prepared"], tables=ray.get(tables) if isinstance(tables, ray.ObjectRef) else tables)
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # `plan["device"]` says "cuda": this worker's own GPU

    recipe = recipes.for_config(config)
    model = recipe.build(prepared, plan, seed)  # the driver's seed: the same initial weights as the driver's model
    checksum = initial_checksum(model)
    if abs(checksum - spec["initial_checksum"]) > 1e-6 * max(1.0, abs(checksum)):
        raise RuntimeError(f"worker {rank} built other initial weights than the driver ({checksum} vs "
                           f"{spec['initial_checksum']}): is the model the same version on every node?")

    dist = Distributed(rank, world, config.backend.trainer.effective_strategy, device, plan["precision"])
    run = RayRun(rank, dist, spec.get("fault"), spec["launched"], entered)
    resume = run.restore()
    if run.finished:  # lost after its final report: hand the same result back
        run.report_final_again()
        return
    from tunefork.errors import DivergedError

    try:
        history = fit(recipe.task(prepared, plan), model, prepared.tables, config, plan, seed, report=run,
                      checkpoints=run, resume=resume, distributed=dist)
    except DivergedError as exc:  # every rank sees the same all-reduced loss: all of them stop here, together
        run.diverged(exc)
        return
    run.finish(model, history)


def initial_checksum(model) -> float:
    """Sum of the trainable weights as the model is built: equal on driver and workers, or parity is lost."""
    import torch

    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters() if p.requires_grad))


class _FullOptimizer:
    """Gives `checkpoint.Checkpoints.save` the gathered optimizer state where it expects an optimizer."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state


class RayRun:
    """`fit`'s report and checkpoint writer on a worker: rank 0 writes, every rank reports (Ray's report is a
    barrier that all ranks must reach as often). The events (per-step loss, each evaluation's scores) travel in the
    checkpoints, so the driver can replay them to its console, HTML report and trackers even after a restart."""

    progress = False  # no tqdm bar in a worker: its output is forwarded line by line

    def __init__(self, rank: int, dist, fault: str | None, launched: float, entered: float):
        from tunefork.training import checkpoint

        self.rank, self.dist, self.fault = rank, dist, fault
        self.folder = Path(tempfile.mkdtemp(prefix="tunefork-worker-"))  # this worker's copy of the checkpoint
        self.writer = checkpoint.Checkpoints(self.folder / "checkpoints") if rank == 0 else None
        self.events: list = []
        self.timing = {"launched": launched, "worker_entered": entered, "first_step": None}
        self.finished = False
        self.restarts = 0

    # --------------------------------------------------------------------------------------------- restore
    def restore(self) -> dict | None:
        """The last checkpoint Ray Train persisted (after a lost worker), loaded as a local resume would be."""
        import ray.train

        from tunefork.training import checkpoint

        restored = ray.train.get_checkpoint()
        if restored is None:
            return None
        with restored.as_directory() as folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            shutil.copytree(folder, self.folder)
        if (self.folder / RESULT).is_file():
            self.finished = True
            return None
        state = json.loads((self.folder / EVENTS).read_text())
        self.events, self.restarts, self.timing = state["events"], state["restarts"] + 1, state["timing"]
        if self.rank == 0:
            self.writer = checkpoint.Checkpoints(self.folder / "checkpoints")  # keeps its last and best
        # every rank loads the full state: DDP replicas and FSDP shards are both cut from it
        resume = checkpoint.load(self.folder / "checkpoints")
        if (self.folder / RNG).is_file():  # the checkpoint's RNG is rank 0's: each rank takes back its own
            from safetensors.torch import load_file

            resume["torch_rng"] = load_file(str(self.folder / RNG)).get(f"rank/{self.rank}", resume["torch_rng"])
        return resume

    # --------------------------------------------------------------------------------------------- fit's calls
    def step(self, step: int, loss: float, learning_rate: float) -> None:
        if self.timing["first_step"] is None:
            self.timing["first_step"] = time.time()
        if self.rank == 0:
            self.events.append(["step", step, loss, learning_rate])
        if self.fault:
            rank, at, marker = self.fault.split(":", 2)
            if int(rank) == self.rank and int(at) == step and not os.path.exists(marker):
                Path(marker).write_text(f"killed rank {self.rank} at step {step}\n")
                os.kill(os.getpid(), signal.SIGKILL)

    def save(self, trainable, optimizer, scheduler, scaler, progress: dict, history: dict, rng_state: dict,
             is_best: bool, adapter: tuple[dict, dict] = ({}, {})) -> None:
        import torch
        from safetensors.torch import save_file

        full = self.dist.optimizer_state(optimizer)  # a collective under FSDP: every rank takes part
        generators = self.dist.gather_objects(torch.get_rng_state())
        if self.rank == 0:
            self.writer.save(trainable, _FullOptimizer(full), scheduler, scaler, progress, history, rng_state, is_best,
                             adapter=adapter)
            save_file({f"rank/{r}": state for r, state in enumerate(generators)}, str(self.folder / RNG))

    def evaluation(self, epoch: int, step: int, scores: dict, history, improved: bool) -> None:
        """After `save`: records the evaluation, then hands the checkpoint (with the events so far) to Ray Train."""
        import ray.train

        metrics = {"epoch": epoch, "step": step, "restarts": self.restarts}
        if self.rank != 0:
            ray.train.report(metrics)
            return
        self.events.append(["evaluation", epoch, step, scores, improved])
        watched = history.best or {}
        # stderr: Ray forwards a worker's stdout twice in Train V2, its stderr once
        sys.stderr.write(f"epoch {epoch} · step {step}: training loss {scores['training']['combined']['loss']:.4f}"
                         + (f", best {watched['split']} {watched['field']} {watched['metric']} {watched['value']:.4f}"
                            if watched else "") + "\n")
        sys.stderr.flush()
        (self.folder / EVENTS).write_text(json.dumps({"events": self.events, "restarts": self.restarts,
                                                      "timing": self.timing}))
        self._report(metrics, self.folder)

    def _report(self, metrics: dict, folder: Path) -> None:
        import ray.train

        # Ray persists a copy; a staging copy keeps our folder ours whatever Ray does with the one it was handed
        staging = Path(tempfile.mkdtemp(prefix="tunefork-report-"))
        shutil.copytree(folder, staging, dirs_exist_ok=True)
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --------------------------------------------------------------------------------------------- the end
    def finish(self, model, history) -> None:
        """Gather the final (best) weights and hand them, with the history and events, to the driver."""
        import ray.train
        from safetensors.torch import save_file

        from tunefork.training.efficiency import peak_device_mb, peak_rss_mb

        state = self.dist.state(model)  # collective
        history.train_tokens = int(self.dist.sum(history.train_tokens))
        history.train_positions = int(self.dist.sum(history.train_positions))
        peaks = self.dist.gather_objects({"peak_rss_mb": round(peak_rss_mb(), 1), "peak_device_mb": peak_device_mb()})
        if self.rank != 0:
            ray.train.report({"done": True})
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, str(self.folder / WEIGHTS))
        (self.folder / RESULT).write_text(json.dumps({
            "history": history.to_state(), "events": self.events, "timing": self.timing, "workers": peaks,
            "restarts": self.restarts,
        }))
        self._report({"done": True, "restarts": self.restarts}, self.folder)

    def diverged(self, exc) -> None:
        """A run that diverged ends as a result, not as a worker failure: Ray would restart the group from the last
        checkpoint `max_failures` times, and each restart would diverge again at the same step. The result carries
        the message and the checkpoints kept so far, which the driver puts in the run directory."""
        import ray.train

        if self.rank != 0:
            ray.train.report({"done": True})
            return
        (self.folder / RESULT).write_text(json.dumps({"diverged": str(exc), "best": exc.best, "events": self.events,
                                                      "restarts": self.restarts}))
        self._report({"done": True, "restarts": self.restarts}, self.folder)

    def report_final_again(self) -> None:
        import ray.train

        if self.rank == 0:
            self._report({"done": True, "restarts": self.restarts}, self.folder)
        else:
            ray.train.report({"done": True})
