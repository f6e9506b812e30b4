"""`tunefork hyperopt -c config.yaml --dataset ...`: the command's flags and its call into the search."""

from __future__ import annotations

import argparse


def flags(p: argparse.ArgumentParser) -> None:
    """The search's own flags (the data flags are the train command's)."""
    p.add_argument("-c", "--config", required=True, help="YAML config with a hyperopt section")
    p.add_argument("--output_directory", default="results", help="where the search folder hyperopt[_N] goes")
    p.add_argument("--random_seed", type=int, default=42)
    p.add_argument("--resume", action="store_true",
                   help="continue the newest search in --output_directory (finished trials are kept)")


def run(args) -> int:
    from tunefork.hyperopt import hyperopt

    hyperopt(args.config, args.dataset, training_set=args.training_set, validation_set=args.validation_set,
             test_set=args.test_set, output_directory=args.output_directory, random_seed=args.random_seed,
             resume=args.resume, quiet=args.quiet)
    return 0
