"""Adapters on a real model: full fine-tune vs LoRA vs AdaLoRA vs IA3 in tunefork, and the same LoRA as the plain
transformers + peft loop a user would write — side by side, in one run.

    .venv/bin/python benchmarks/adapters.py [--rows 4000] [--epochs 1] [--lr lora=5e-4 ...] [--cases lora,plain_peft_lora]

SST-2 (first N training rows; dev for validation; test for the reported accuracy), all-MiniLM-L6-v2,
max_sequence_length 64, batch size 32, AdamW with 10% linear warm-up then linear decay, gradient clipping at 1.0 in
both loops (tunefork's default, 0.5, is set to 1.0 here so the two loops clip alike). Each case runs in its own
process (own peak RSS, no warm caches). Train examples/s counts the training steps only, evaluation excluded.

Honest differences, stated: tunefork batches rows of similar length together by default (`trainer.group_by_length`:
less padding, same rows each epoch), the plain loop shuffles freely with dynamic padding — so `lora_random_batches`
(group_by_length: false) is the like-for-like speed comparison and `lora` is what a user gets by default. Heads
differ too: tunefork mean-pools over real tokens into one linear layer; AutoModelForSequenceClassification uses
BERT's pooler ([CLS] → dense → tanh) and a classifier that peft trains in full (modules_to_save).

Learning rates (not swept here; pass --lr to sweep): full fine-tune 1e-4 (as benchmarks/full_finetune.py), LoRA and
AdaLoRA 1e-3 (the LoRA paper used 5e-4 for RoBERTa-base on SST-2 with r 8; a 6-layer MiniLM with r 16 tolerates
more), IA3 3e-3 (the (IA)³ paper's rate). The plain loop uses LoRA's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BATCH, LENGTH, SEED = 32, 64, 42
LORA = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.1}
ADAPTERS = {"full": None, "lora": LORA, "lora_random_batches": LORA, "adalora": {"type": "adalora"}, "ia3": {"type": "ia3"}}
LEARNING_RATES = {"full": 1e-4, "lora": 1e-3, "lora_random_batches": 1e-3, "adalora": 1e-3, "ia3": 3e-3,
                  "plain_peft_lora": 1e-3}
ORDER = ("plain_peft_lora", "lora", "lora_random_batches", "full", "adalora", "ia3")


def data(rows: int):
    import pandas as pd

    folder = common.sst2()
    return pd.read_csv(folder / "train.csv").head(rows), pd.read_csv(folder / "dev.csv"), pd.read_csv(folder / "test.csv")


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


def tunefork_case(case: str, rows: int, epochs: int, lr: float) -> dict:
    from tunefork import Model

    train, dev, test = data(rows)
    adapter = ADAPTERS[case]
    encoder = {"type": "auto_transformer", "pretrained_model_name_or_path": str(common.minilm()),
               **({"adapter": adapter} if adapter else {"trainable": True})}
    config = {
        "input_features": [{"name": "sentence", "type": "text", "preprocessing": {"max_sequence_length": LENGTH},
                            "encoder": encoder}],
        "output_features": [{"name": "label", "type": "category"}],
        "trainer": {"epochs": epochs, "batch_size": BATCH, "learning_rate": lr, "optimizer": {"type": "adamw"},
                    "learning_rate_scheduler": {"warmup_fraction": 0.1, "decay": "linear"},
                    "gradient_clipping": {"clipglobalnorm": 1.0},
                    "validation_field": "label", "validation_metric": "accuracy",
                    "group_by_length": case != "lora_random_batches"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        model = Model(config, quiet=True)
        result, test_stats = model.experiment(training_set=train, validation_set=dev, test_set=test, output_directory=tmp)
        folder = result.output_directory / "model"
        weights, whole = folder_bytes(folder, "*.safetensors"), folder_bytes(folder)
    eff = result.efficiency
    return {"train_examples_per_second": eff["train_examples_per_second"], "train_seconds": eff["seconds"]["train"],
            "peak_rss_mb": eff["peak_rss_mb"], "test_accuracy": test_stats["label"]["accuracy"],
            "trainable_parameters": sum(p.numel() for p in model.model.parameters() if p.requires_grad),
            "total_parameters": sum(p.numel() for p in model.model.parameters()),
            "saved_weights_bytes": weights, "saved_folder_bytes": whole, "learning_rate": lr}


def plain_peft_case(rows: int, epochs: int, lr: float) -> dict:
    """The loop from peft's README, for sequence classification: what a user writes without tunefork."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    common.quiet_transformers()
    torch.manual_seed(SEED)
    train, _, test = data(rows)
    labels = sorted(train.label.unique())
    path = common.minilm()
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=LORA["r"], lora_alpha=LORA["alpha"],
                                            lora_dropout=LORA["dropout"], target_modules=["query", "value"]))

    rate, seconds, accuracy = common.plain_classifier_loop(model, tokenizer, train, test, labels, epochs, lr, BATCH, LENGTH)
    trainable, total = model.get_nb_trainable_parameters()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        weights, whole = folder_bytes(Path(tmp), "*.safetensors"), folder_bytes(Path(tmp))
    return {"train_examples_per_second": rate, "train_seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "test_accuracy": accuracy,
            "trainable_parameters": trainable, "total_parameters": total,
            "saved_weights_bytes": weights, "saved_folder_bytes": whole, "learning_rate": lr}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--cases", default=",".join(ORDER), help="comma-separated subset of: " + ", ".join(ORDER))
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", action="append", default=[], metavar="CASE=LR", help="override a case's learning rate")
    args = parser.parse_args()
    rates = dict(LEARNING_RATES)
    for item in args.lr:
        case, value = item.split("=")
        rates[case] = float(value)
    if args.case:
        run = plain_peft_case if args.case == "plain_peft_lora" else (lambda *a: tunefork_case(args.case, *a))
        print(json.dumps(run(args.rows, args.epochs, rates[args.case])))
        return

    common.sst2()  # exits with a message when the data is absent
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(ORDER))
    if unknown:
        sys.exit(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    load_before = os.getloadavg()
    results = {}
    for case in cases:
        extra = ["--rows", str(args.rows), "--epochs", str(args.epochs), "--lr", f"{case}={rates[case]}"]
        results[case] = common.in_subprocess(Path(__file__), case, *extra)
        print(f"{case}: done", file=sys.stderr)
    summary = {
        "setup": {"model": "all-MiniLM-L6-v2", "rows": args.rows, "epochs": args.epochs, "batch_size": BATCH,
                  "max_sequence_length": LENGTH, "optimizer": "adamw, 10% warm-up, linear decay, clip 1.0",
                  "lora": LORA, "tunefork_batches": "length-grouped (trainer.group_by_length) except lora_random_batches",
                  "load_average_before_after": [load_before, os.getloadavg()], "cpus": os.cpu_count()},
        "cases": results,
    }
    checks = {}
    if "plain_peft_lora" in results:
        plain = results["plain_peft_lora"]["train_examples_per_second"]
        summary["ratio_examples_per_second_vs_plain_peft"] = {k: v["train_examples_per_second"] / plain for k, v in results.items()}
        for case in ("lora", "lora_random_batches"):
            if case in results:
                checks[f"{case} examples/s >= 0.95 x plain peft"] = results[case]["train_examples_per_second"] >= 0.95 * plain
    if "lora" in results and "full" in results:
        share = results["lora"]["saved_weights_bytes"] / results["full"]["saved_weights_bytes"]
        summary["lora_saved_weights_share_of_full"] = share
        checks["lora artifact <= 5% of full"] = share <= 0.05
    if "lora" in results:
        checks["lora test accuracy >= 0.83"] = results["lora"]["test_accuracy"] >= 0.83
    summary["targets"] = checks

    plain = results.get("plain_peft_lora", {}).get("train_examples_per_second")
    print("| case | lr | train ex/s | × plain peft | peak RSS MB | trainable params | saved weights | saved folder | test acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, r in results.items():
        ratio = f"{r['train_examples_per_second'] / plain:.2f}" if plain else "—"
        print(f"| {case} | {r['learning_rate']:g} | {r['train_examples_per_second']:.1f} | {ratio} | {r['peak_rss_mb']:.0f} | "
              f"{r['trainable_parameters']:,} ({100 * r['trainable_parameters'] / r['total_parameters']:.2f}%) | "
              f"{r['saved_weights_bytes'] / 2**20:.2f} MiB | {r['saved_folder_bytes'] / 2**20:.2f} MiB | {r['test_accuracy']:.4f} |")
    for name, ok in checks.items():
        print(f"- {'met' if ok else 'MISSED'}: {name}")
    print(f"saved {common.save('adapters', summary)}")


if __name__ == "__main__":
    main()
