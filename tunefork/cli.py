"""`tunefork` command line, with Ludwig's flag names. Imports nothing heavy until a command runs."""

from __future__ import annotations

import argparse
import logging
import sys

COMMANDS = {
    "train": "train a model from a config and a dataset",
    "predict": "write predictions of a trained model for a dataset",
    "evaluate": "score a trained model on a labelled dataset",
    "experiment": "train, then evaluate on the test split",
    "check-config": "validate a config",
    "render-config": "print a config with every default filled in",
}


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="one table, split by preprocessing.split")
    p.add_argument("--training_set", help="the training table (instead of --dataset)")
    p.add_argument("--validation_set", help="the validation table")
    p.add_argument("--test_set", help="the test table")


def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config")
    _data_flags(p)
    p.add_argument("--output_directory", default="results", help="where run directories go (default: results)")
    p.add_argument("--experiment_name", default="experiment")
    p.add_argument("--model_name", default="run")
    p.add_argument("--random_seed", type=int, default=42)
    p.add_argument("--skip_save_model", action="store_true", help="train without writing a run directory")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tunefork", description="Declarative fine-tuning of Hugging Face transformers.")
    root.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    root.add_argument("--quiet", action="store_true", help="print results only")
    sub = root.add_subparsers(dest="command", metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=text, description=text) for name, text in COMMANDS.items()}
    _train_flags(parsers["train"])
    _train_flags(parsers["experiment"])
    for name in ("predict", "evaluate"):
        p = parsers[name]
        p.add_argument("-m", "--model_path", required=True, help="a model folder or run directory")
        p.add_argument("--dataset", required=True)
        p.add_argument("--output_directory", default="results", help="where the output files go")
    parsers["predict"].add_argument("--output_format", choices=("csv", "parquet"), default="csv")
    for name in ("check-config", "render-config"):
        parsers[name].add_argument("config", help="YAML config")
    return root


def _run(args) -> int:
    from pathlib import Path

    if args.command in ("check-config", "render-config"):
        from tunefork import config

        loaded = config.load(args.config)
        print(config.render(loaded) if args.command == "render-config" else f"{args.config}: valid")
        return 0

    from tunefork.api import Model

    if args.command in ("train", "experiment"):
        model = Model(args.config, quiet=args.quiet)
        run = model.train if args.command == "train" else model.experiment
        run(args.dataset, training_set=args.training_set, validation_set=args.validation_set, test_set=args.test_set,
            output_directory=args.output_directory, experiment_name=args.experiment_name, model_name=args.model_name,
            random_seed=args.random_seed, skip_save_model=args.skip_save_model)
        return 0

    model = Model.load(args.model_path, quiet=args.quiet)
    out = Path(args.output_directory)
    if args.command == "predict":
        frame = model.predict(args.dataset)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"predictions.{args.output_format}"
        frame.to_csv(path, index=False) if args.output_format == "csv" else frame.to_parquet(path, index=False)
        print(f"{len(frame)} predictions written to {path}")
        return 0
    from tunefork import rundir
    from tunefork.console import Console

    statistics = model.evaluate(args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / "test_statistics.json", statistics)
    Console().table({"dataset": statistics}, f"evaluation of {args.model_path}")
    print(f"statistics written to {out / 'test_statistics.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help()
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.debug:
        _quiet_libraries()
    from tunefork.errors import TuneforkError

    try:
        return _run(args)
    except TuneforkError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    try:  # transformers prints a load report and progress bars on every from_pretrained
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
