"""Ludwig's text encoders trained from scratch on SST-2: test accuracy and seconds per epoch, per encoder.

    .venv/bin/python benchmarks/text_encoders.py [--epochs 2] [--encoders parallel_cnn embed rnn]

Each case is the bare `tunefork train` command in its own process on the whole SST-2 training split (67,349 rows),
dev for validation, test for the figure, with the Ludwig config a user writes for it: the text input with no
`encoder` (Ludwig's default, `parallel_cnn`, with Ludwig's default sizes: 256-wide embeddings, four convolutions of
256 filters, fc 512 → 256) or with `encoder: <name>`, Ludwig's default text preprocessing (`space_punct`, lowercase,
the 20,000 most common tokens), batch 128, Adam at 1e-3 (Ludwig's trainer default). Seconds per epoch are the train
phase of efficiency.json over the epochs (evaluation excluded); test accuracy is at the best validation accuracy.
Results are printed and saved to benchmarks/results/text_encoders.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ENCODERS = ("parallel_cnn", "embed", "rnn", "stacked_cnn", "cnnrnn")


def config(encoder: str, epochs: int) -> dict:
    text = {"name": "sentence", "type": "text"}
    if encoder != "parallel_cnn":  # parallel_cnn is what a text input gets without `encoder`
        text["encoder"] = encoder
    return {
        "input_features": [text],
        "output_features": [{"name": "label", "type": "category"}],
        "trainer": {"epochs": epochs, "batch_size": 128, "learning_rate": 0.001, "optimizer": {"type": "adam"},
                    "evaluate_training_set": False, "early_stop": -1, "validation_field": "label",
                    "validation_metric": "accuracy"},
    }


def run_case(work: Path, encoder: str, epochs: int) -> dict:
    path = work / f"{encoder}.yaml"
    path.write_text(yaml.safe_dump(config(encoder, epochs)))
    sst2 = common.sst2()
    data = ["--training_set", str(sst2 / "train.csv"), "--validation_set", str(sst2 / "dev.csv"),
            "--test_set", str(sst2 / "test.csv")]
    _, eff, stats, wall = common.train_command(path, data, work / "runs" / encoder, encoder)
    best = stats["best"]["evaluation"]
    return {"encoder": encoder, "epochs": epochs, "seconds_per_epoch": eff["seconds"]["train"] / epochs,
            "seconds": eff["seconds"], "wall_seconds": wall,
            "train_examples_per_second": eff["train_examples_per_second"], "peak_rss_mb": eff["peak_rss_mb"],
            "validation_accuracy": stats["validation"]["label"]["accuracy"][best],
            "test_accuracy": stats["test"]["label"]["accuracy"][best]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS[:3]), choices=ENCODERS)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for encoder in args.encoders:
            results.append(run_case(Path(tmp), encoder, args.epochs))
            print(json.dumps(results[-1]), flush=True)
    path = common.save("text_encoders", {"data": "SST-2 train 67,349 / dev 872 / test 1,821", "cases": results})
    print(f"{'encoder':<14}{'s/epoch':>9}{'ex/s':>8}{'test acc':>10}")
    for r in results:
        print(f"{r['encoder']:<14}{r['seconds_per_epoch']:>9.1f}{r['train_examples_per_second']:>8.0f}{r['test_accuracy']:>10.4f}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
