"""Full fine-tuning: tunefork vs the plain transformers + PyTorch loop a user would write, in one run.

    .venv/bin/python benchmarks/full_finetune.py [--rows 4000] [--epochs 2]

Same model (all-MiniLM-L6-v2), data (first N SST-2 training rows; dev for validation; test), batch size 32,
max_sequence_length 64, epochs, optimizer (AdamW, lr 1e-4, 10% linear warm-up then linear decay). Each case runs in
its own process. Training examples/s counts training steps only (evaluation excluded) in both.
Cases: tunefork as configured by default (length-grouped batches), tunefork with `group_by_length: false`
(batches as random as the plain loop's), and the plain loop (AutoModelForSequenceClassification, DataLoader
with shuffle and DataCollatorWithPadding — dynamic padding).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BATCH, LENGTH, LR, SEED = 32, 64, 1e-4, 42


def data(rows: int):
    import pandas as pd

    folder = common.sst2()
    return pd.read_csv(folder / "train.csv").head(rows), pd.read_csv(folder / "dev.csv"), pd.read_csv(folder / "test.csv")


def tunefork_case(rows: int, epochs: int, group_by_length: bool, learning_rate: float | str = LR) -> dict:
    """`learning_rate: "auto"` runs the range test first (benchmarks/lr_auto.py)."""
    from tunefork import Model

    train, dev, test = data(rows)
    config = {
        "input_features": [{"name": "sentence", "type": "text", "preprocessing": {"max_sequence_length": LENGTH},
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(common.minilm()), "trainable": True}}],
        "output_features": [{"name": "label", "type": "category"}],
        "trainer": {"epochs": epochs, "batch_size": BATCH, "learning_rate": learning_rate, "optimizer": {"type": "adamw"},
                    "learning_rate_scheduler": {"warmup_fraction": 0.1, "decay": "linear"},
                    "validation_field": "label", "validation_metric": "accuracy", "group_by_length": group_by_length},
    }
    with tempfile.TemporaryDirectory() as tmp:
        model = Model(config, quiet=True)
        result, test_stats = model.experiment(training_set=train, validation_set=dev, test_set=test, output_directory=tmp)
    eff = result.efficiency
    return {"train_examples_per_second": eff["train_examples_per_second"], "train_seconds": eff["seconds"]["train"],
            "peak_rss_mb": eff["peak_rss_mb"], "test_accuracy": test_stats["label"]["accuracy"],
            "learning_rate": result.plan["learning_rate"]["value"],
            "range_test_seconds": eff["seconds"].get("learning_rate_range_test")}


def plain_case(rows: int, epochs: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    common.quiet_transformers()
    torch.manual_seed(SEED)
    train, _, test = data(rows)
    labels = sorted(train.label.unique())
    path = common.minilm()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))

    rate, seconds, accuracy = common.plain_classifier_loop(model, tokenizer, train, test, labels, epochs, LR, BATCH, LENGTH)
    return {"train_examples_per_second": rate, "train_seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "test_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if args.case:
        cases = {"tunefork": lambda: tunefork_case(args.rows, args.epochs, True),
                 "tunefork_random_batches": lambda: tunefork_case(args.rows, args.epochs, False),
                 "plain_loop": lambda: plain_case(args.rows, args.epochs)}
        print(json.dumps(cases[args.case]()))
        return
    extra = ["--rows", str(args.rows), "--epochs", str(args.epochs)]
    results = {case: common.in_subprocess(Path(__file__), case, *extra) for case in ("plain_loop", "tunefork", "tunefork_random_batches")}
    plain = results["plain_loop"]["train_examples_per_second"]
    summary = {
        "setup": {"model": "all-MiniLM-L6-v2", "rows": args.rows, "epochs": args.epochs, "batch_size": BATCH,
                  "max_sequence_length": LENGTH, "optimizer": "adamw", "learning_rate": LR, "schedule": "10% warm-up, linear decay"},
        "cases": results,
        "ratio_examples_per_second_vs_plain": {k: v["train_examples_per_second"] / plain for k, v in results.items()},
    }
    print("| case | train examples/s | × plain | peak RSS MB | test accuracy |\n|---|---|---|---|---|")
    for case, r in results.items():
        print(f"| {case} | {r['train_examples_per_second']:.1f} | {r['train_examples_per_second'] / plain:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r['test_accuracy']:.4f} |")
    print(f"saved {common.save('full_finetune', summary)}")


if __name__ == "__main__":
    main()
