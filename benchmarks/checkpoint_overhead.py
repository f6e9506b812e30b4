"""Checkpoint overhead and resume time on the SST-2 MiniLM full fine-tune.

    .venv/bin/python benchmarks/checkpoint_overhead.py [--rows 2000] [--epochs 2]

Cases, each in its own process: (1) no run directory, hence no checkpoints; (2) the same run writing a checkpoint
after every epoch (weights, AdamW state, RNGs: what a resume needs), timed inside; (3) that run killed with SIGKILL
right after its first checkpoint, then resumed: the seconds to read the checkpoint back, and the resumed run's wall.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def config(epochs: int) -> dict:
    return {
        "input_features": [{"name": "sentence", "type": "text", "preprocessing": {"max_sequence_length": 64},
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(common.minilm()), "trainable": True}}],
        "output_features": [{"name": "label", "type": "category"}],
        "trainer": {"epochs": epochs, "batch_size": 32, "learning_rate": 1e-4, "optimizer": {"type": "adamw"}, "early_stop": -1},
    }


def train_case(rows: int, epochs: int, out: str | None, resume: str | None) -> dict:
    import pandas as pd

    from tunefork import Model

    data = pd.read_csv(common.sst2() / "train.csv").head(rows)
    model = Model(config(epochs), quiet=True)
    start = time.perf_counter()
    result = model.train(training_set=data, output_directory=out or "unused", skip_save_model=out is None and resume is None,
                         model_resume_path=resume)
    seconds = result.efficiency["seconds"]
    return {"seconds": seconds, "wall": time.perf_counter() - start, "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out")
    parser.add_argument("--resume")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(train_case(args.rows, args.epochs, args.out, args.resume)))
        return
    me, flags = Path(__file__), ["--rows", str(args.rows), "--epochs", str(args.epochs)]
    plain = common.in_subprocess(me, "train", *flags)
    with tempfile.TemporaryDirectory() as tmp:
        checkpointed = common.in_subprocess(me, "train", *flags, "--out", tmp)
        run = Path(tmp) / "killed"
        # start a run and kill it right after its first checkpoint
        process = subprocess.Popen([sys.executable, str(me), "--case", "train", *flags, "--out", str(run)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pointer = run / "experiment_run" / "checkpoints" / "pointer.json"
        while process.poll() is None and not pointer.is_file():
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        resumed = common.in_subprocess(me, "train", *flags, "--resume", str(run / "experiment_run"))
    epoch = checkpointed["seconds"]["train"] / args.epochs
    per_checkpoint = checkpointed["seconds"]["checkpoint"] / args.epochs
    report = {
        "setup": {"model": "all-MiniLM-L6-v2", "rows": args.rows, "epochs": args.epochs, "batch_size": 32, "optimizer": "adamw"},
        "no_checkpoints": plain, "checkpoint_every_epoch": checkpointed, "resumed_after_sigkill": resumed,
        "epoch_seconds": epoch, "checkpoint_seconds": per_checkpoint, "overhead_fraction": per_checkpoint / epoch,
        "epoch_seconds_without_checkpoints": plain["seconds"]["train"] / args.epochs,
        "resume_read_seconds": resumed["seconds"]["resume"],
    }
    print("| | seconds |\n|---|---|")
    print(f"| training epoch (checkpointing run) | {epoch:.1f} |")
    print(f"| training epoch (no checkpoints) | {report['epoch_seconds_without_checkpoints']:.1f} |")
    print(f"| one checkpoint (weights + AdamW state + RNG, fsync'ed) | {per_checkpoint:.2f} ({100 * report['overhead_fraction']:.1f}% of an epoch) |")
    print(f"| reading the checkpoint back on resume | {report['resume_read_seconds']:.2f} |")
    print(f"| the resumed run, whole (1 epoch left) | {resumed['wall']:.1f} |")
    print(f"saved {common.save('checkpoint_overhead', report)}")


if __name__ == "__main__":
    main()
