"""`learning_rate: auto` on the SST-2 full fine-tune, against the hand-set 1e-4 of examples/sst2_full_finetune.yaml,
in one run (each case in its own process, one after the other, on the same machine).

    .venv/bin/python benchmarks/lr_auto.py [--rows 4000] [--epochs 2]

Both cases are benchmarks/full_finetune.py's tunefork case (all-MiniLM-L6-v2 trained in full, first N SST-2 training
rows, dev for validation, test, batch 32, AdamW, 10% linear warm-up then linear decay); only `learning_rate` differs.
With `auto`, a 100-step range test (1e-8 → 1) picks the learning rate before training; its seconds are reported
apart from training's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import full_finetune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if args.case:
        rate = "auto" if args.case == "auto" else full_finetune.LR
        print(json.dumps(full_finetune.tunefork_case(args.rows, args.epochs, True, learning_rate=rate)))
        return
    extra = ["--rows", str(args.rows), "--epochs", str(args.epochs)]
    results = {case: common.in_subprocess(Path(__file__), case, *extra) for case in ("hand_set", "auto")}
    summary = {"setup": {"model": "all-MiniLM-L6-v2", "rows": args.rows, "epochs": args.epochs,
                         "batch_size": full_finetune.BATCH, "max_sequence_length": full_finetune.LENGTH,
                         "optimizer": "adamw", "schedule": "10% warm-up, linear decay",
                         "hand_set_learning_rate": full_finetune.LR}, "cases": results}
    print("| learning_rate | learning rate used | range test s | train s | test accuracy |\n|---|---|---|---|---|")
    for case, r in results.items():
        shown = "auto" if case == "auto" else f"{full_finetune.LR:g}"
        test_s = f"{r['range_test_seconds']:.1f}" if r["range_test_seconds"] is not None else "–"
        print(f"| {shown} | {r['learning_rate']:.3g} | {test_s} | {r['train_seconds']:.1f} | {r['test_accuracy']:.4f} |")
    print(f"saved {common.save('lr_auto', summary)}")


if __name__ == "__main__":
    main()
