"""Ludwig's command-line spellings on tunefork's commands: `init_config` and `render_config` (and `check_config`)
as aliases, and Ludwig's flags — `--config_str`, `--data_format`, `--mlflow`, `--skip_save_*`, `--skip_collect_*`,
`-g/--gpus`, `-b/--backend`, `-l/--logging_level` — each mapped onto what tunefork does, or refused in one line that
says why and what to write instead (`--gpus` on a machine without a GPU, `--backend horovod`); and the config
commands, which take the config as Ludwig gives it (a path, `-c/--config` or `--config_str`).

`tunefork.cli` stays the one command line: it adds these flags to its parsers and calls `check`, `train_options`,
`loggers`, `data` and `config_command` here.
"""

from __future__ import annotations

import argparse
import logging

from tunefork.errors import TuneforkError

ALIASES = {"init-config": ["init_config"], "render-config": ["render_config"], "check-config": ["check_config"]}
CANONICAL = {alias: name for name, aliases in ALIASES.items() for alias in aliases}
LEVELS = ("critical", "error", "warning", "info", "debug", "notset")
TRAIN_SKIPS = ("skip_save_training_description", "skip_save_training_statistics", "skip_save_progress",
               "skip_save_log", "skip_save_processed_input")
EVAL_SKIPS = ("skip_save_unprocessed_output", "skip_save_predictions", "skip_save_eval_stats",
              "skip_collect_predictions", "skip_collect_overall_stats")
SKIP_HELP = {
    "skip_save_training_description": "no description.json in the finished run (it is what a resume reads)",
    "skip_save_training_statistics": "no training_statistics.json",
    "skip_save_progress": "no checkpoints while training (the run cannot be resumed)",
    "skip_save_log": "no TensorBoard logs: tunefork writes them only with --logger tensorboard, which this refuses",
    "skip_save_processed_input": "neither read nor write the preprocessed-data cache",
    "skip_save_unprocessed_output": "accepted: tunefork never writes raw tensor outputs",
    "skip_save_predictions": "do not write the predictions file (evaluate never writes one: use predict)",
    "skip_save_eval_stats": "do not write test_statistics.json",
    "skip_collect_predictions": "do not collect (so do not write) the predictions (evaluate never writes them)",
    "skip_collect_overall_stats": "leave the confusion matrices out of the statistics",
}


def canonical(command: str | None) -> str | None:
    return CANONICAL.get(command, command)


def _skips(p: argparse.ArgumentParser, names) -> None:
    for name in names:
        p.add_argument(f"--{name}", action="store_true", help=SKIP_HELP[name])


def _machine_flags(p: argparse.ArgumentParser, backend: bool) -> None:
    p.add_argument("-g", "--gpus", nargs="+", help="GPUs to use (CUDA_VISIBLE_DEVICES); refused without a GPU")
    p.add_argument("--gpu_memory_limit", help="refused: tunefork does not cap GPU memory (batch_size: auto fits it)")
    if backend:
        p.add_argument("-b", "--backend", help="local or ray (sets backend.type); horovod, deepspeed, dask are refused")
    p.add_argument("-l", "--logging_level", choices=LEVELS, help="log level of tunefork's messages (default info)")


def train_flags(p: argparse.ArgumentParser, experiment: bool) -> None:
    """Ludwig's flags of `train` and `experiment`."""
    p.add_argument("--config_str", help="the config as a YAML or JSON string (instead of -c/--config)")
    p.add_argument("--data_format", help="read the data as csv, tsv, json, jsonl or parquet whatever its extension")
    p.add_argument("--training_set_metadata", help="refused: tunefork fits the metadata on the training split")
    p.add_argument("--mlflow", action="store_true", help="track the run in MLflow (the same as --logger mlflow)")
    _skips(p, TRAIN_SKIPS)
    if experiment:
        _skips(p, EVAL_SKIPS)
        p.add_argument("--eval_split", default="test", help="the split evaluated (tunefork: test only)")
    _machine_flags(p, backend=True)


def inference_flags(p: argparse.ArgumentParser, command: str) -> None:
    """Ludwig's flags of `predict` and `evaluate` (their --backend is tunefork's own)."""
    p.add_argument("--data_format", help="read the data as csv, tsv, json, jsonl or parquet whatever its extension")
    p.add_argument("-s", "--split", default="full", help="the split predicted (tunefork: full, every row given)")
    p.add_argument("-bs", "--batch_size", type=int, help="refused: set trainer.eval_batch_size in the config")
    _skips(p, EVAL_SKIPS if command == "evaluate" else ("skip_save_unprocessed_output", "skip_save_predictions"))
    _machine_flags(p, backend=False)


def config_flags(p: argparse.ArgumentParser, render: bool) -> None:
    """check-config and render-config: the config as a positional path, -c/--config or --config_str."""
    p.add_argument("config", nargs="?", help="YAML config")
    p.add_argument("-c", "--config", dest="config_flag", help="YAML config (Ludwig's spelling)")
    p.add_argument("--config_str", help="the config as a YAML or JSON string")
    if render:
        p.add_argument("-o", "--output", help="write the rendered config to this file (default: print it)")


def config_source(args, required: bool = True):
    """The config the command was given: a path (positional or -c/--config) or the parsed --config_str."""
    from tunefork import config

    given = [v for v in (getattr(args, "config", None), getattr(args, "config_flag", None)) if v is not None]
    text = getattr(args, "config_str", None)
    if len(given) + (text is not None) > 1:
        raise TuneforkError("give the config once: a path (or -c/--config) or --config_str, not both")
    if text is not None:
        return config.parse_yaml(text, "--config_str")
    if not given and required:
        raise TuneforkError("give a config: a YAML path, -c/--config, or --config_str")
    return given[0] if given else None


def backend_of(source, backend):
    """The config (path or dict) with `--backend` as its backend.type (a dict then), refused where unknown."""
    if backend is None:
        return source
    from tunefork import config
    from tunefork.ludwig_model import with_backend

    return with_backend(config.read_yaml(source) if not isinstance(source, dict) else source, backend)


def check(args) -> None:
    """Refuse in one line what has no meaning here; apply --gpus and --logging_level."""
    from tunefork.ludwig_model import use_gpus

    if getattr(args, "gpu_memory_limit", None) is not None:
        raise TuneforkError("--gpu_memory_limit: tunefork does not cap GPU memory; leave it out (trainer.batch_size: "
                            "auto fits the batch to the memory there is)")
    if getattr(args, "training_set_metadata", None) is not None:
        raise TuneforkError("--training_set_metadata: tunefork fits the metadata on the training split of each run; "
                            "leave it out")
    if getattr(args, "split", "full") != "full":
        raise TuneforkError(f"--split {args.split}: tunefork {args.command}s every row of --dataset; pass that "
                            "split's rows as the dataset")
    if getattr(args, "batch_size", None) is not None:
        raise TuneforkError("--batch_size: set trainer.eval_batch_size in the model's config; prediction batches "
                            "follow it")
    if getattr(args, "eval_split", "test") != "test":
        raise TuneforkError(f"--eval_split {args.eval_split}: tunefork's experiment evaluates the test split; score "
                            "another split with `tunefork evaluate --dataset` on its rows")
    if getattr(args, "skip_save_log", False) and "tensorboard" in (getattr(args, "logger", None) or ()):
        raise TuneforkError("--skip_save_log and --logger tensorboard contradict each other; keep one")
    if getattr(args, "data_format", None) not in (None, "auto") and getattr(args, "backend", None) == "ray":
        raise TuneforkError("--data_format with --backend ray: Ray Data reads each file by its extension; rename the "
                            "file to .csv, .tsv, .json, .jsonl or .parquet instead")
    backend = getattr(args, "backend", None)
    if backend is not None and args.command in ("predict", "evaluate") and backend not in ("local", "ray"):
        from tunefork.ludwig_model import with_backend

        with_backend({}, backend)  # the same one-line refusal as train's
    use_gpus(getattr(args, "gpus", None))
    level = getattr(args, "logging_level", None)
    if level is not None:
        logging.getLogger("tunefork").setLevel(level.upper())


def loggers(args) -> list[str] | None:
    """--logger values, with --mlflow as Ludwig's spelling of `--logger mlflow`."""
    names = list(getattr(args, "logger", None) or [])
    if getattr(args, "mlflow", False) and "mlflow" not in names:
        names.append("mlflow")
    return names or None


def train_options(args) -> dict:
    """The skip_save_* keywords of `Model.train` (and of `experiment`) the command line was given."""
    options = {name: getattr(args, name) for name in TRAIN_SKIPS if name != "skip_save_log"}
    if args.command == "experiment":
        options["skip_save_eval_stats"] = args.skip_save_eval_stats
        options["skip_save_predictions"] = args.skip_save_predictions or args.skip_collect_predictions
    return options


def data(args, source):
    """A dataset flag's value read as --data_format says (a path otherwise left for tunefork to read)."""
    from tunefork.data import read

    return read.with_format(source, getattr(args, "data_format", None))


def config_command(args) -> int:
    """check-config / render-config on the config as given (a path, -c/--config or --config_str)."""
    from tunefork import check, config

    source = config_source(args)
    loaded = config.load(source)
    if args.command == "check-config":
        skipped = check.check(loaded, strict=False)  # the model's config.json too, when it can be read
        name = "--config_str" if isinstance(source, dict) else source
        print(f"{name}: valid" + (f" (not checked against the model: {skipped})" if skipped else ""))
        return 0
    text = config.render(loaded)
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text + "\n", encoding="utf-8")
        print(f"config written to {args.output}")
    else:
        print(text)
    return 0
