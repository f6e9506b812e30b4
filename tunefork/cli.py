"""`tunefork` command line, with Ludwig's flag names. Imports nothing heavy until a command runs."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from tunefork import ludwig_cli, serve_cli
from tunefork.hyperopt import command as search_command

COMMANDS = {
    "train": "train a model from a config and a dataset",
    "predict": "write predictions of a trained model for a dataset",
    "evaluate": "score a trained model on a labelled dataset",
    "experiment": "train, then evaluate on the test split",
    "hyperopt": "search the config's hyperopt section on Ray Tune: a run directory per trial, the best one named",
    "check-config": "validate a config",
    "render-config": "print a config with every default filled in",
    "init-config": "write a starting config inferred from a dataset",
    "serve": "serve a trained model over REST (FastAPI + uvicorn)",
    "visualize": "draw learning curves, confusion matrices, comparisons, ROC curves from run directories",
    "export": "write a trained model as a transformers folder or an ONNX graph",
    "convert-gguf": "convert a GGUF file (llama.cpp) once into a plain transformers folder for base_model",
}


# optional dependencies → the extra that installs them, for one clear line when a command needs one that is missing
EXTRAS = {"matplotlib": "viz", "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "onnx": "export",
          "onnxruntime": "serve", "onnxscript": "export", "prometheus_client": "serve", "tensorboard": "tracking", "ray": "ray"}


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="one table, split by preprocessing.split")
    p.add_argument("--training_set", help="the training table (instead of --dataset)")
    p.add_argument("--validation_set", help="the validation table")
    p.add_argument("--test_set", help="the test table")


def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config (not needed with --model_resume_path)")
    _data_flags(p)
    p.add_argument("--model_resume_path", help="a run directory that stopped: continue from its last checkpoint")
    p.add_argument("--output_directory", default="results", help="where run directories go (default: results)")
    p.add_argument("--experiment_name", default="experiment")
    p.add_argument("--model_name", default="run")
    p.add_argument("--random_seed", type=int, default=42)
    p.add_argument("--skip_save_model", action="store_true", help="train without writing a run directory")
    p.add_argument("--logger", action="append", choices=("tensorboard", "mlflow"),
                   help="track the run (per-step loss and lr, metrics, config); repeat for several; off by default")


def _model_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the commands that load a model folder (predict, evaluate, serve, export)."""
    p.add_argument("-m", "--model_path", required=True, help="a model folder or run directory")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let code shipped with the model folder run (an auto_map and its .py files); the folder's "
                        "own trust_remote_code is never obeyed; off by default")


def _global_flags(inside_command: bool) -> argparse.ArgumentParser:
    """--debug, --quiet and --allow-pickle, accepted before the command and after it (`tunefork train ... --quiet`)."""
    p = argparse.ArgumentParser(add_help=False)
    # after the command the default is SUPPRESS, so a flag given before the command is not reset to False
    default = argparse.SUPPRESS if inside_command else False
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks for every error")
    p.add_argument("--quiet", action="store_true", default=default, help="print results only")
    p.add_argument("--allow-pickle", action="store_true", default=default,
                   help="also load models that ship only pickle weights (.bin), which can run code; off by default")
    return p


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tunefork", description="Declarative fine-tuning of Hugging Face transformers.",
                                   parents=[_global_flags(inside_command=False)])
    sub = root.add_subparsers(dest="command", metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=text, description=text, parents=[_global_flags(inside_command=True)],
                                    aliases=ludwig_cli.ALIASES.get(name, []))
               for name, text in COMMANDS.items()}
    for name in ("train", "experiment"):
        _train_flags(parsers[name])
        ludwig_cli.train_flags(parsers[name], experiment=name == "experiment")
    _data_flags(parsers["hyperopt"])
    search_command.flags(parsers["hyperopt"])
    for name in ("predict", "evaluate"):
        p = parsers[name]
        _model_flags(p)
        p.add_argument("--dataset", required=True)
        p.add_argument("--output_directory", default="results", help="where the output files go")
        p.add_argument("--backend",
                       help="ray: Ray Data workers read a folder, glob or Parquet/CSV file, each loading the model once "
                            "(default: the model config's backend.type for a folder or glob, else this process)")
        ludwig_cli.inference_flags(p, name)
        serve_cli.engine_flag(p)
        p.add_argument("--overwrite", action="store_true",
                       help="replace an earlier output; by default a new name is taken (predictions_1.csv, ...)")
    parsers["predict"].add_argument("--output_format", choices=("csv", "parquet"), default="csv",
                                    help="with --backend ray, parquet writes a folder predictions/ of parts in input order")
    for name in ("check-config", "render-config"):
        ludwig_cli.config_flags(parsers[name], render=name == "render-config")
    _product_flags(parsers)
    return root


def _positive_count(text: str) -> int:
    """argparse type of a limit that must be a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def _product_flags(parsers: dict) -> None:
    p = parsers["init-config"]
    p.add_argument("--dataset", required=True, help="the data to infer feature types from (a sample is read)")
    p.add_argument("--target", required=True, help="the column to predict")
    p.add_argument("--model", help="text encoder: a local folder or hub id (default sentence-transformers/all-MiniLM-L6-v2)")
    p.add_argument("-o", "--output", help="where to write the YAML (default: print it)")
    p = parsers["serve"]
    _model_flags(p)
    p.add_argument("-H", "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("-p", "--port", type=int, default=8000)
    p.add_argument("--max_request_mb", type=float, default=8.0, help="largest request body accepted (default 8 MB)")
    serve_cli.flags(p, _positive_count)
    p.add_argument("-l", "--logging_level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p = parsers["visualize"]
    p.add_argument("-v", "--visualization", required=True,
                   choices=("learning_curves", "confusion_matrix", "compare_performance", "roc_curves",
                            "hyperopt_report", "hyperopt_hiplot"))
    p.add_argument("-r", "--run_directories", nargs="+", required=True, help="run directories (hyperopt_*: a search folder)")
    p.add_argument("--model_names", nargs="+", help="a name per run directory for legends (default: folder names)")
    p.add_argument("-ofn", "--output_feature_name", help="only this output feature")
    p.add_argument("-gt", "--ground_truth", help="roc_curves: the test dataset with the true labels, row for row")
    p.add_argument("--positive_label", help="roc_curves: the class counted as positive")
    p.add_argument("-od", "--output_directory", default="visualizations", help="where the pictures go")
    p.add_argument("-ff", "--file_format", choices=("png", "svg"), default="png")
    p = parsers["export"]
    _model_flags(p)
    p.add_argument("-f", "--format", required=True, choices=("hf", "onnx"), help="hf: a transformers folder; onnx: a graph")
    p.add_argument("-o", "--output", required=True, help="the folder to write (must not exist or be empty)")
    p.add_argument("--merge-adapter", action="store_true",
                   help="fold a trained adapter (every weight method: lora, adalora, ia3, loha, lokr, vera, oft, "
                   "boft, hra, vblora, fourierft, waveft, tinylora, ln_tuning) into the base weights first")
    p = parsers["convert-gguf"]
    p.add_argument("gguf_file", help="the .gguf file")
    p.add_argument("-o", "--output", help="the folder to write (default: <cache dir>/converted/<file name>)")


def _convert(args) -> int:
    from tunefork import convert

    output = args.output or convert.default_output(args.gguf_file)
    print(f"converted: {convert.convert_gguf(args.gguf_file, output)} (use it as base_model)")
    return 0


def _product(args) -> int:
    """init-config, serve, visualize, export: each a thin call into its own module."""
    if args.command == "init-config":
        from tunefork.init_config import init_config

        text = init_config(args.dataset, args.target, args.model, args.output)
        print(f"config written to {args.output}" if args.output else text, end="\n" if args.output else "")
    elif args.command == "serve":
        serve_cli.serve(args, parser())
    elif args.command == "visualize" and args.visualization.startswith("hyperopt_"):  # a search folder
        from tunefork.hyperopt import plots

        print(*plots.render(args.visualization, args.run_directories, args.output_directory, args.file_format), sep="\n")
    elif args.command == "visualize":
        from tunefork import visualize

        written = visualize.render(args.visualization, args.run_directories, args.output_directory,
                                   file_format=args.file_format, model_names=args.model_names,
                                   output_feature_name=args.output_feature_name, ground_truth=args.ground_truth,
                                   positive_label=args.positive_label)
        print("\n".join(map(str, written)))
    else:
        from tunefork import export

        written = export.export(args.model_path, args.format, args.output, merge_adapter=args.merge_adapter)
        print(f"{args.format} export written to {written}")
    return 0


def _check_numbers(args) -> None:
    """Flags argparse takes as any int that the libraries below would refuse with a traceback: numpy seeds are
    0..2**32-1 and TCP ports 1..65535 (port 0 would bind a random port nobody is told about)."""
    from tunefork.errors import TuneforkError

    seed, port = getattr(args, "random_seed", None), getattr(args, "port", None)
    if seed is not None and not 0 <= seed < 2**32:
        raise TuneforkError(f"--random_seed: {seed} is not a seed (a whole number from 0 to {2**32 - 1})")
    if port is not None and not 1 <= port <= 65535:
        raise TuneforkError(f"-p/--port: {port} is not a TCP port (1 to 65535)")


def _run(args) -> int:
    _check_numbers(args)
    ludwig_cli.check(args)
    if args.command in ("check-config", "render-config"):
        return ludwig_cli.config_command(args)
    if args.command in ("init-config", "serve", "visualize", "export"):
        return _product(args)
    if args.command == "convert-gguf":
        return _convert(args)
    if args.command == "hyperopt":
        return search_command.run(args)
    if args.command in ("train", "experiment"):
        from tunefork.api import Model, config_of_run
        from tunefork.errors import TuneforkError

        source = ludwig_cli.config_source(args, required=False)
        if source is None and args.model_resume_path is None:
            raise TuneforkError("give a config with -c/--config or --config_str (or --model_resume_path to continue a run)")
        model = Model(ludwig_cli.backend_of(source or config_of_run(args.model_resume_path), args.backend),
                      quiet=args.quiet)
        run = model.train if args.command == "train" else model.experiment
        data = {name: ludwig_cli.data(args, getattr(args, name))
                for name in ("dataset", "training_set", "validation_set", "test_set")}
        extra = {"skip_collect_overall_stats": args.skip_collect_overall_stats} if args.command == "experiment" else {}
        run(data.pop("dataset"), **data, output_directory=args.output_directory, experiment_name=args.experiment_name,
            model_name=args.model_name, random_seed=args.random_seed, skip_save_model=args.skip_save_model,
            logger=ludwig_cli.loggers(args), model_resume_path=args.model_resume_path,
            **ludwig_cli.train_options(args), **extra)
        return 0

    args.dataset = ludwig_cli.data(args, args.dataset)  # read as --data_format says, when given
    ray = _ray_backend(args)
    if args.command == "predict":
        if args.skip_save_predictions:
            print(f"{len(_local_model(args).predict(_read(args.dataset)))} predictions made; none written "
                  "(--skip_save_predictions)")
            return 0
        if ray is not None:
            from tunefork.backends import ray_predict

            parts = args.output_format == "parquet"  # a folder of Parquet parts
            name = "predictions" if parts else "predictions.csv"
            path, rows = _output(args, name, lambda p: ray_predict.write(args.model_path, args.dataset, ray, p,
                                                                         args.output_format), folder=parts)
        else:
            frame = _local_model(args).predict(_read(args.dataset))
            write = frame.to_csv if args.output_format == "csv" else frame.to_parquet
            path, _ = _output(args, f"predictions.{args.output_format}", lambda p: write(p, index=False))
            rows = len(frame)
        print(f"{rows} predictions written to {path}")
        return 0
    from tunefork import rundir
    from tunefork.api import overall_stats
    from tunefork.console import Console

    if ray is not None:
        from tunefork.backends import ray_predict

        statistics, _ = ray_predict.evaluate(args.model_path, args.dataset, ray)
    else:
        statistics = _local_model(args).evaluate(_read(args.dataset))[0]
    statistics = overall_stats(statistics, keep=not args.skip_collect_overall_stats)
    Console().table({"dataset": statistics}, f"evaluation of {args.model_path}")
    if args.skip_save_eval_stats:
        print("statistics not written (--skip_save_eval_stats)")
        return 0
    path, _ = _output(args, "test_statistics.json", lambda p: rundir.write_json(p, statistics))
    print(f"statistics written to {path}")
    return 0


def _local_model(args):
    """The model that predicts / evaluates in this process, on the engine --engine picks (`tunefork.onnx_engine`)."""
    from tunefork import onnx_engine

    fitted, engine = onnx_engine.load(args.model_path, args.engine, trust_remote_code=args.trust_remote_code)
    logging.getLogger("tunefork").info(engine)
    return fitted


def _read(dataset):
    from tunefork.data import read

    return read.read(dataset)


def _ray_backend(args):
    """The Ray backend section when predict / evaluate run on Ray Data workers (read from the model folder's config
    without loading its weights here), else None."""
    from tunefork import backends
    from tunefork.models import folder

    config, _ = folder.records(args.model_path)
    return backends.on_ray(config, args.dataset, args.backend)


def _output(args, name: str, write, folder: bool = False):
    """Write a predict / evaluate result as `name` (a file, or a `folder` of parts) in --output_directory, never over
    an earlier one (unless --overwrite): the run directory's `_N` rule picks the name, reserved before writing.
    Returns (the path, what `write` returned)."""
    import shutil
    from pathlib import Path

    from tunefork import rundir

    directory = Path(args.output_directory)
    made = not directory.exists()
    path = rundir.output_file(directory, name, overwrite=args.overwrite, folder=folder)
    try:
        return path, write(path)
    except BaseException:
        if not args.overwrite:  # the empty file or folder reserved for it: ours
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        if made and not any(directory.iterdir()):  # and the output directory this command made, left empty
            directory.rmdir()
        raise


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.command = ludwig_cli.canonical(args.command)  # init_config → init-config, ...
    if args.command is None:
        parser().print_help()
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.debug:
        _quiet_libraries()
    from tunefork import safety
    from tunefork.errors import TuneforkError

    safety.allow_pickle(args.allow_pickle)
    safety.allow_remote_code(getattr(args, "trust_remote_code", False))  # serve and export load through Model.load
    try:
        return _run(args)
    except TuneforkError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if args.debug or package not in EXTRAS:
            raise
        print(f"error: `tunefork {args.command}` needs {package}: pip install 'tunefork[{EXTRAS[package]}]'", file=sys.stderr)
        return 2
    except Exception as exc:  # the machine refused (exit 1), not the user's mistake (2); anything else is a bug
        failure = _environment_failure(exc)
        if args.debug or failure is None:
            raise
        print(f"error: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:  # the flag is this command's: a later Model.load in the same process asks for itself
        safety.allow_remote_code(False)


def _environment_failure(exc: BaseException):
    """`exc` as one sentence when the machine refused a file operation (disk full, permissions, a read-only or
    file-in-the-way path), else None (a bug: it keeps its traceback). Where a module knows what it was writing it
    raises EnvironmentFailure itself, with advice; this catches the rest (the final save, the run directory)."""
    from tunefork.errors import EnvironmentFailure, environment_failure, os_error

    if isinstance(exc, EnvironmentFailure):
        return exc
    error = os_error(exc)
    return environment_failure(exc, None if error is not None and error.filename else "write a file")


def _quiet_libraries() -> None:
    import os
    import warnings

    # Batches tokenize on every core. Set explicitly, the Rust tokenizer also stays quiet about a later fork (it then
    # turns its threads off in the child itself); unset, it would print a warning at every fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    # transformers prints a load report and progress bars on every from_pretrained; it reads these when first imported,
    # so a command that never needs it (predict on ONNX Runtime) does not pay its import here
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run() -> None:
    """The console script: `main`, then a prompt exit."""
    code = main()
    # The process ends here. Python's final garbage collection would walk the ~0.5 M objects torch, transformers and
    # the run leave behind (a second or more) only to free memory the OS takes back anyway; frozen objects are
    # skipped. Every file is closed by now, and atexit handlers (logging, trackers, Ray) still run.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
