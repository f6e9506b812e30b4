"""Prediction and evaluation on Ray: a folder or glob of Parquet / CSV files through a trained model of either kind,
Ray Data reading the files and a pool of actors each holding the model once.

    ray_data.read(files) ─► map_batches(Predictor, compute=ActorPoolStrategy(...)) ─► a pandas frame per batch
                         ─► the driver, block by block in input order (`preserve_order`): one DataFrame, Parquet
                            parts or one CSV written as they arrive, or the statistics over every row

`Predictor` is Ray Data's callable class: its `__init__` runs once per actor and loads the model folder as
`Model.load` does (`models.folder.load` + the recipe's `loaded`); its `__call__` is the Fitted's own predict on the
batch (a classifier's probabilities, a causal LM's greedy generations), so a worker computes what one process does.

Evaluate computes the metrics once, on the driver, over all rows: ROC-AUC, macro-F1 or BLEU of a dataset are not
means of per-batch values. Next to the predictions, the workers return what scoring needs in hidden columns — an
ECD model's per-row outputs and targets and its per-batch loss sums (`training.ecd.Collector`'s state, merged on the
driver), a causal LM's per-batch token-loss sum and token count with each row's reference (`recipes.llm.statistics`).

A user mistake in a batch (a bad cell) comes back as data in an ERROR column and is raised on the driver as the
one-line error it is (raised in the actor it would reach the user as Ray's traceback); a missing column is found in
the schema before any actor starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tunefork.backends import ray_data
from tunefork.errors import DataError, TuneforkError, first_line

log = logging.getLogger("tunefork.ray")
ERROR = ray_data.ERROR
HIDDEN = "__tunefork|"  # scoring columns: read by the driver, never written
OUT, TARGET, LOSS, REFERENCE = f"{HIDDEN}out|", f"{HIDDEN}target|", f"{HIDDEN}loss|", f"{HIDDEN}reference"
SCORED, TRUNCATED = f"{HIDDEN}scored|", f"{HIDDEN}truncated"  # rows a loss counted (per output); prompts cut
# A Ray batch holds a few of the model's evaluation batches: the length sort inside it still groups rows of similar
# length, and a dataset is still cut into enough batches to keep every actor busy.
EVAL_BATCHES_PER_CALL = 4


# ------------------------------------------------------------------------------------------------ the driver
def predict(model, dataset, backend) -> pd.DataFrame:
    """Every row's predictions, in input order, as one frame."""
    frames = [frame for frame, _ in _blocks(model, dataset, backend, evaluate=False)]
    if not frames:
        raise DataError(f"{dataset}: no rows")
    return pd.concat(frames, ignore_index=True)


def write(model, dataset, backend, target, output_format: str) -> int:
    """Predictions written as they arrive, in input order, to `target`: a folder of `part-00000.parquet`, ... or one
    CSV file. Written beside the target and moved into place at the end: an error leaves nothing behind. Returns the
    number of rows."""
    blocks = _blocks(model, dataset, backend, evaluate=False)
    first = next(blocks, None)  # the files, columns and model folder are checked before anything is written
    target = Path(target)
    staging = target.with_name(target.name + ".partial")
    _remove(staging)
    if output_format == "parquet":
        staging.mkdir()
    rows = parts = 0
    try:
        for frame, _ in itertools.chain([first] if first is not None else [], blocks):
            if len(frame) == 0:
                continue
            if output_format == "parquet":
                frame.to_parquet(staging / f"part-{parts:05d}.parquet", index=False)
                parts += 1
            else:
                frame.to_csv(staging, mode="a", header=rows == 0, index=False)
            rows += len(frame)
        if rows == 0:
            raise DataError(f"{dataset}: no rows")
    except BaseException:
        _remove(staging)
        raise
    _remove(target)
    staging.rename(target)
    return rows


def evaluate(model, dataset, backend) -> tuple[dict, pd.DataFrame]:
    """(statistics, predictions): the metrics of every row, computed once here from what the workers returned."""
    from tunefork.models import folder as folders

    frames, hidden = [], []
    with _model_folder(model) as path:
        config, meta = folders.records(path)
        for frame, scoring in _blocks(path, dataset, backend, evaluate=True):
            frames.append(frame)
            hidden.append(scoring)
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(predictions) == 0:
        raise DataError(f"{dataset}: no row left to score")
    if config.model_type == "llm":
        return _llm_statistics(config, meta, predictions, hidden), predictions
    return _ecd_statistics(config, meta, hidden), predictions


def _blocks(model, dataset, backend, evaluate: bool):
    """(predictions, scoring columns) of each output block, in input order; a worker's error raised here."""
    import ray.data

    from tunefork.backends import cluster
    from tunefork.models import folder as folders

    files = _files(dataset)
    with _model_folder(model) as path, cluster.session(backend), ray_data._ordered_and_quiet():
        config, _ = folders.records(path)
        table = ray_data.read(files, backend.processor.parallelism)
        _check_columns(config, table.schema().names, str(dataset), evaluate)
        actors = pool(backend)
        eval_batch = config.trainer.eval_batch_size  # else plan.resolve_inference's default, which needs no hardware
        rows = EVAL_BATCHES_PER_CALL * (eval_batch if isinstance(eval_batch, int) else 8 if config.model_type == "llm" else 64)
        log.info("%s %s on Ray: up to %d worker(s), %s each, %d rows a call", "evaluating" if evaluate else
                 "predicting", dataset, actors.size, actors.resources, rows)
        # An autoscaling pool from one actor: a fixed pool holding every CPU would leave none to the read tasks that
        # feed it, and Ray Data would wait for them forever.
        # Arrow batches, made pandas by the actor as `pd.read_parquet` makes them: Ray's pandas batches hold
        # Arrow-backed columns, in which NaN is not missing, and the features' checks would read them otherwise
        output = table.map_batches(
            Predictor, batch_format="pyarrow", batch_size=rows, fn_constructor_args=(str(path), evaluate, str(dataset)),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors.size), **actors.remote_args())
        for block in output.iter_batches(batch_size=None, batch_format="pandas"):
            if ERROR in block.columns and block[ERROR].notna().any():
                raise DataError(str(block[ERROR].dropna().iloc[0]))
            block = block.drop(columns=[ERROR], errors="ignore").reset_index(drop=True)
            scoring = [c for c in block.columns if c.startswith(HIDDEN)]
            yield block.drop(columns=scoring), block[scoring]


def _files(dataset) -> list[str]:
    files = ray_data.file_set(dataset)
    if files is not None:
        return files
    if isinstance(dataset, (str, Path)) and Path(dataset).is_file() and Path(dataset).suffix.lower() in ray_data.FORMATS:
        return [str(dataset)]
    raise DataError(f"{dataset}: Ray Data reads a folder, a glob or a file of Parquet or CSV; this is none of them")


def _check_columns(config, names: list[str], source: str, evaluate: bool) -> None:
    """The one-sentence error of a missing column, from the schema, before any actor starts."""
    empty = pd.DataFrame(columns=names)
    empty.attrs["source"] = source
    if config.model_type == "llm":
        from tunefork.data import prompts

        prompts.check_columns(config, empty, with_output=evaluate)
    else:
        from tunefork.features import pipeline

        pipeline.check_columns(config, {"dataset": empty}, with_outputs=evaluate)


@contextlib.contextmanager
def _model_folder(model):
    """A model folder the workers can load: the one given, or a model of this process saved to a temporary folder
    (on a cluster of several machines, save it to shared storage and give that folder instead)."""
    if isinstance(model, (str, Path)):
        from tunefork.models import folder as folders

        yield folders.check(model)
        return
    with tempfile.TemporaryDirectory(prefix="tunefork-predict-") as tmp:
        model.save(Path(tmp) / "model")
        yield Path(tmp) / "model"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ------------------------------------------------------------------------------------------------ the actors
@dataclasses.dataclass(frozen=True)
class Pool:
    size: int  # the most actors
    resources: dict[str, float]  # what each reserves

    def remote_args(self) -> dict:
        """`map_batches`' names for the resources of one actor."""
        rest = dict(self.resources)
        args = {"num_cpus": rest.pop("CPU", 0), "num_gpus": rest.pop("GPU", 0)}
        if "memory" in rest:
            args["memory"] = rest.pop("memory")
        return {**args, **({"resources": rest} if rest else {})}


def pool(backend) -> Pool:
    """The actors, from `backend.trainer`: `num_workers` (default: as many as the cluster's CPUs, or GPUs with
    `use_gpu`, hold), each reserving `resources_per_worker` (default one CPU, and one GPU with `use_gpu`)."""
    import ray

    from tunefork.backends import cluster

    trainer, offered = backend.trainer, ray.cluster_resources()
    use_gpu = offered.get("GPU", 0) > 0 if trainer.use_gpu is None else trainer.use_gpu
    if use_gpu and offered.get("GPU", 0) == 0:
        raise TuneforkError("backend.trainer.use_gpu is true, but the Ray cluster has no GPU")
    resources = {"CPU": 1.0, **({"GPU": 1.0} if use_gpu else {}), **(trainer.resources_per_worker or {})}
    for name, amount in resources.items():
        if amount > offered.get(name, 0):
            message = (f"backend.trainer.resources_per_worker: a prediction worker needs {name} {amount:g}, and the Ray "
                       f"cluster has {offered.get(name, 0):g}")
            if cluster.STARTUP["cluster"] == "a local cluster started for this run":
                raise TuneforkError(message)
            log.warning("%s; waiting for the cluster to grow (autoscaling)", message)
    if trainer.num_workers is not None:
        return Pool(trainer.num_workers, resources)
    unit = "GPU" if resources.get("GPU") else "CPU"
    size = int(offered.get(unit, 0) // resources[unit]) if resources.get(unit) else 1
    return Pool(max(1, size), resources)


class Predictor:
    """Ray Data's callable class: the model loaded once per actor, each batch predicted (and scored) with it."""

    def __init__(self, folder: str, evaluate: bool, source: str):
        self.evaluate, self.source, self.error = evaluate, source, None
        try:
            from tunefork import recipes
            from tunefork.models import folder as folders

            config, meta, model, tokenizers = folders.load(folder)
            self.fitted = recipes.for_config(config).loaded(model, meta, tokenizers)
        except TuneforkError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 — said once on the driver; raised here, Ray would restart the actor
            self.error = f"{folder}: cannot load the model on a Ray worker ({first_line(exc)})"

    def __call__(self, table) -> pd.DataFrame:
        if self.error is not None:
            return pd.DataFrame({ERROR: [self.error]})
        batch = table.to_pandas()
        batch.attrs["source"] = self.source
        try:
            if not self.evaluate:
                return self.fitted.predict(batch).reset_index(drop=True)
            scored = _llm_part if self.fitted.config.model_type == "llm" else _ecd_part
            return scored(self.fitted, batch)
        except TuneforkError as exc:
            return pd.DataFrame({ERROR: [str(exc)]})


def _first_row(value, rows: int) -> np.ndarray:
    """A batch's sum carried by its first row (zeros below), so the driver adds it once whatever the block layout."""
    column = np.zeros(rows, dtype=np.float64 if isinstance(value, float) else np.int64)
    if rows:
        column[0] = value
    return column


# ------------------------------------------------------------------------------------------------ ECD scoring
def _ecd_part(fitted, batch: pd.DataFrame) -> pd.DataFrame:
    """The batch's predictions, and per row each output's raw outputs and target, plus the batch's loss sums."""
    collector, table, _ = fitted.collect(batch, with_targets=True)
    outputs = collector.outputs() if collector.rows else {}
    frame = fitted.predictions(outputs, table).reset_index(drop=True) if collector.rows else pd.DataFrame()
    rows = len(table)
    for feature in fitted.config.output_features:
        for key, values in outputs.get(feature.name, {}).items():
            if values.ndim == 2:
                for j in range(values.shape[1]):
                    frame[f"{OUT}{feature.name}|{key}|{j}"] = values[:, j]
            else:
                frame[f"{OUT}{feature.name}|{key}"] = values
        frame[f"{TARGET}{feature.name}"] = np.asarray(table[feature.name]) if rows else np.zeros(0)
    for name, total in collector.loss_sum.items():
        frame[f"{LOSS}{name}"] = _first_row(float(total), rows)
    for name, counted in collector.loss_rows.items():
        frame[f"{SCORED}{name}"] = _first_row(int(counted), rows)
    return frame


def _ecd_statistics(config, meta: dict, hidden: list[pd.DataFrame]) -> dict:
    """`Collector.scores` over every row: each block's outputs and loss sums as one worker's state, merged."""
    from tunefork.training.ecd import Collector

    states, targets, start = [], {f.name: [] for f in config.output_features}, 0
    for block in hidden:
        if len(block) == 0:
            continue
        parts = {}
        for feature in config.output_features:
            head, values = f"{OUT}{feature.name}|", {}
            for column in (c for c in block.columns if c.startswith(head)):
                key, _, j = column[len(head):].partition("|")
                values.setdefault(key, []).append((j, block[column].to_numpy()))
            parts[feature.name] = [{key: np.stack([v for _, v in found], axis=1) if found[0][0] else found[0][1]
                                    for key, found in values.items()}]
            targets[feature.name].append(block[f"{TARGET}{feature.name}"].to_numpy())
        losses = {c[len(LOSS):]: float(block[c].sum()) for c in block.columns if c.startswith(LOSS)}
        scored = {c[len(SCORED):]: int(block[c].sum()) for c in block.columns if c.startswith(SCORED)}
        states.append((parts, [np.arange(start, start + len(block))], losses, scored, len(block)))
        start += len(block)
    collector = Collector(config, meta).merge(states)
    return collector.scores({name: np.concatenate(parts) for name, parts in targets.items()})


# ------------------------------------------------------------------------------------------------ LLM scoring
def _llm_part(fitted, batch: pd.DataFrame) -> pd.DataFrame:
    """The batch's responses with each row's reference, plus the batch's token-loss sum and token count."""
    from tunefork.features import llm_output

    loss, responses, references, labelled = fitted.scored(batch)
    frame = pd.DataFrame(llm_output.columns(fitted.config, fitted.meta, responses))
    frame[REFERENCE] = pd.Series(references, dtype=object)
    frame[f"{LOSS}sum"] = _first_row(float(loss.total), len(labelled))
    frame[f"{LOSS}tokens"] = _first_row(int(loss.tokens), len(labelled))
    frame[TRUNCATED] = _first_row(int((fitted.last_generation or {}).get("prompts_truncated", 0)), len(labelled))
    return frame


def _llm_statistics(config, meta: dict, predictions: pd.DataFrame, hidden: list[pd.DataFrame]) -> dict:
    from tunefork.recipes.llm import statistics
    from tunefork.training.llm import TokenLoss

    scoring = pd.concat(hidden, ignore_index=True)
    loss = TokenLoss(config.output.name, float(scoring[f"{LOSS}sum"].sum()), int(scoring[f"{LOSS}tokens"].sum()))
    responses = predictions[f"{config.output.name}_response"].astype(str).tolist()
    return statistics(config, meta, loss, responses, scoring[REFERENCE].astype(str).tolist(),
                      int(scoring[TRUNCATED].sum()))
