"""A hyperparameter search against the separate runs a user would otherwise start, on SST-2 with all-MiniLM-L6-v2.

    .venv/bin/python benchmarks/hyperopt.py [--rows 4000] [--trials 16] [--epochs 5] [--held_out N] [--lora_rows 256]
                                            [--lora_trials 8]

Case 1, frozen: MiniLM frozen with cached embeddings, `use_mixed_precision: true`, max_sequence_length 64, SST-2's first
`--rows` training rows (dev for validation, test for test). Three arms, each a bare command in its own process, timed
from launch to exit, each with a fresh cache folder:
  (i)   one cold `tunefork train` of the default config (no fc layers, learning rate 1e-3, no dropout);
  (ii)  `tunefork hyperopt`: `--trials` random draws (seeded) over learning rate (loguniform 1e-4..1e-2),
        combiner.fc_layers (three sizes) and combiner.dropout (uniform 0..0.3), ASHA over the epochs;
  (iii) the same draws as separate `tunefork train` commands, one after another (the cache they share on disk means
        only the first embeds).
Target: (ii) ≤ 3 × (i). Reported: wall time, the best trial's validation and test accuracy beside the default config's,
and the encoder passes each arm made (a pass: the frozen encoder run over the data, read from efficiency.json and the
search's record).
Case 2, LoRA: a trainable LoRA adapter on MiniLM (no embedding cache), `--lora_trials` draws over learning rate and r
with ASHA, against the same draws as separate runs; sized to finish in minutes on a 2-core CPU (`--lora_rows` training
rows, a quarter of that for validation and test, max_sequence_length 32, 2 epochs), as the JSON says. Reported: wall
time of both and the share of the training epochs ASHA did not run.
"""

from __future__ import annotations

import argparse
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

LENGTH, BATCH = 64, 32
FC_LAYERS = [[{"output_size": 64}], [{"output_size": 256}], [{"output_size": 256}, {"output_size": 64}]]


def frozen_config(epochs: int, trials: int) -> dict:
    return {
        "input_features": [{"name": "sentence", "type": "text",
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(common.minilm())},
                            "preprocessing": {"max_sequence_length": LENGTH, "cache_encoder_embeddings": True}}],
        "output_features": [{"name": "label", "type": "category"}],
        "trainer": {"epochs": epochs, "batch_size": BATCH, "learning_rate": 1e-3, "use_mixed_precision": True,
                    "evaluate_training_set": False, "early_stop": -1, "validation_field": "label",
                    "validation_metric": "accuracy"},
        "hyperopt": {"goal": "maximize", "output_feature": "label", "metric": "accuracy",
                     "parameters": {
                         "trainer.learning_rate": {"space": "loguniform", "lower": 1e-4, "upper": 1e-2},
                         "combiner.fc_layers": {"space": "choice", "categories": FC_LAYERS},
                         "combiner.dropout": {"space": "uniform", "lower": 0.0, "upper": 0.3}},
                     "search_alg": {"type": "variant_generator", "random_state_seed": 7},
                     "executor": {"num_samples": trials, "time_budget_s": 3600,
                                  "scheduler": {"type": "async_hyperband", "grace_period": 1, "max_t": epochs,
                                                "reduction_factor": 2}}},
    }


def lora_config(trials: int) -> dict:
    return {
        "input_features": [{"name": "sentence", "type": "text",
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(common.minilm()),
                                        "adapter": {"type": "lora", "r": 8}},
                            "preprocessing": {"max_sequence_length": 32}}],
        "output_features": [{"name": "label", "type": "category"}],
        "trainer": {"epochs": 2, "batch_size": 16, "learning_rate": 5e-4, "evaluate_training_set": False,
                    "early_stop": -1, "validation_field": "label", "validation_metric": "accuracy"},
        "hyperopt": {"goal": "maximize", "output_feature": "label", "metric": "accuracy",
                     "parameters": {
                         "trainer.learning_rate": {"space": "loguniform", "lower": 1e-4, "upper": 3e-3},
                         "input_features.sentence.encoder.adapter.r": {"space": "choice", "categories": [4, 8, 16]}},
                     "search_alg": {"type": "variant_generator", "random_state_seed": 7},
                     "executor": {"num_samples": trials, "scheduler": {
                         "type": "async_hyperband", "grace_period": 1, "max_t": 2, "reduction_factor": 2}}},
    }


def tables(work: Path, rows: int, held_out: int | None) -> list[str]:
    """train / validation / test CSVs (SST-2's train head, dev and test; `held_out` rows of each when given)."""
    import pandas as pd

    folder, paths = common.sst2(), []
    for name, source, n in (("train", "train.csv", rows), ("validation", "dev.csv", held_out),
                            ("test", "test.csv", held_out)):
        frame = pd.read_csv(folder / source)
        path = work / f"{name}.csv"
        (frame.head(n) if n else frame).to_csv(path, index=False)
        paths.append(str(path))
    return paths


def command(args: list[str], cache: Path) -> float:
    """Run `python -m tunefork ARGS` with its own cache folder; its wall seconds from launch to exit."""
    env = {**os.environ, "TUNEFORK_CACHE_DIR": str(cache), "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "tunefork", *args, "--quiet"], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"tunefork {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def run_record(run: Path) -> dict:
    """Validation and test accuracy at the evaluation that picked the model, and whether the encoder ran."""
    stats = json.loads((run / "training_statistics.json").read_text())
    efficiency = json.loads((run / "efficiency.json").read_text())
    best = stats["best"]["evaluation"]
    return {"validation_accuracy": stats["validation"]["label"]["accuracy"][best],
            "test_accuracy": stats["test"]["label"]["accuracy"][best],
            "encoder_passes": sum(not hit for hit in efficiency.get("embedding_cache_hit", {}).values())}


def without_search(config: dict, values: dict) -> dict:
    """The config a user would write for one draw: the search's values in place, no hyperopt section."""
    from tunefork.hyperopt import paths

    return paths.apply(config, values)


def arms(work: Path, config: dict, data: list[str], default_run: bool) -> dict:
    """(i) the default config once (optional), (ii) the search, (iii) the search's draws as separate runs."""
    flags = ["--training_set", data[0], "--validation_set", data[1], "--test_set", data[2]]
    out = {}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    if default_run:
        plain = work / "default.yaml"
        plain.write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "hyperopt"}))
        seconds = command(["train", "-c", str(plain), *flags, "--output_directory", str(work / "cold")], work / "c1")
        out["cold_default_run"] = {"wall_seconds": round(seconds, 1), **run_record(next((work / "cold").iterdir()))}
    seconds = command(["hyperopt", "-c", str(path), *flags, "--output_directory", str(work / "search")], work / "c2")
    statistics = json.loads((work / "search" / "hyperopt" / "hyperopt_statistics.json").read_text())
    records = statistics["hyperopt_results"]
    best = records[0]
    trial_passes = sum(run_record(Path(r["run_directory"]))["encoder_passes"] for r in records
                       if r["status"] == "completed")
    epochs = config["trainer"]["epochs"]
    out["search"] = {
        "wall_seconds": round(seconds, 1), "trials": len(records),
        "completed": statistics["search"]["completed"], "stopped_by_asha": statistics["search"]["stopped"],
        "failed": statistics["search"]["failed"],
        "epochs_trained": sum(r["evaluations"] for r in records), "epochs_without_asha": epochs * len(records),
        "encoder_passes": statistics["search"]["work_done_once"]["encoder_passes"] + trial_passes,
        "best_parameters": best["parameters"], "best_trial": run_record(Path(best["run_directory"])),
    }
    out["search"]["share_of_epochs_asha_saved"] = round(1 - out["search"]["epochs_trained"] / (epochs * len(records)), 3)
    total, passes, accuracies = 0.0, 0, []
    for i, record in enumerate(records):
        one = work / f"separate_{i}.yaml"
        one.write_text(yaml.safe_dump(without_search(config, record["parameters"])))
        total += command(["train", "-c", str(one), *flags, "--output_directory", str(work / "separate")], work / "c3")
    for run in sorted((work / "separate").iterdir()):
        record = run_record(run)
        passes += record["encoder_passes"]
        accuracies.append(record["validation_accuracy"])
    out["separate_runs"] = {"runs": len(records), "wall_seconds": round(total, 1), "encoder_passes": passes,
                            "best_validation_accuracy": max(accuracies)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--held_out", type=int, help="at most this many dev and test rows (default: all)")
    parser.add_argument("--lora_rows", type=int, default=256)
    parser.add_argument("--lora_trials", type=int, default=8)
    parser.add_argument("--skip_lora", action="store_true")
    args = parser.parse_args()
    result = {"machine": f"{os.cpu_count()} CPUs, shared with other jobs", "frozen": {}, "lora": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "frozen"
        work.mkdir()
        config = frozen_config(args.epochs, args.trials)
        held = f"first {args.held_out}" if args.held_out else "all"
        result["frozen"] = {"rows": {"training": args.rows, "validation": f"SST-2 dev, {held} rows",
                                     "test": f"SST-2 test, {held} rows"},
                            "epochs": args.epochs, **arms(work, config, tables(work, args.rows, args.held_out), True)}
        frozen = result["frozen"]
        frozen["search_over_cold_run"] = round(frozen["search"]["wall_seconds"] / frozen["cold_default_run"]["wall_seconds"], 2)
        frozen["target_search_at_most_3x_cold_run"] = frozen["search_over_cold_run"] <= 3
        frozen["separate_over_search"] = round(frozen["separate_runs"]["wall_seconds"] / frozen["search"]["wall_seconds"], 2)
        frozen["best_trial_test_accuracy_minus_default"] = round(
            frozen["search"]["best_trial"]["test_accuracy"] - frozen["cold_default_run"]["test_accuracy"], 4)
        print(json.dumps(frozen, indent=2), flush=True)
        if not args.skip_lora:
            work = Path(tmp) / "lora"
            work.mkdir()
            held = max(1, args.lora_rows // 4)
            lora = arms(work, lora_config(args.lora_trials), tables(work, args.lora_rows, held), False)
            lora["sized"] = (f"{args.lora_rows} training rows, {held} validation and {held} test rows, "
                             "max_sequence_length 32, 2 epochs: minutes on a 2-core CPU")
            lora["separate_over_search"] = round(lora["separate_runs"]["wall_seconds"] / lora["search"]["wall_seconds"], 2)
            result["lora"] = lora
            print(json.dumps(lora, indent=2), flush=True)
    print(f"saved: {common.save('hyperopt', result)}")


if __name__ == "__main__":
    main()
