"""Frozen encoders at the cost of one forward pass: full fine-tune vs frozen vs frozen + cached embeddings.

    .venv/bin/python benchmarks/frozen_encoder.py [--rows 4000] [--repeats 3] [--long_epochs 10]

SST-2 (first N training rows; dev for validation; test), all-MiniLM-L6-v2, max_sequence_length 64, batch size 32
everywhere, `use_mixed_precision: true` and `evaluate_training_set: false` (the source's three settings together).
Each case is the bare `tunefork train` command in its own process, timed from launch to exit:
  (a) full fine-tune; (b) frozen, no cache; (c) frozen + cache, cold (a fresh cache); (d) the same again, warm;
  (e) the floor: a bare `model(**batch)` loop under inference_mode over the same distinct texts, length-sorted, with
      the same autocast, at its best batch size (found by a sweep), run once in a fresh process — as a user's script
      runs it, including the first pass's kernel set-up.
Start-up is what that bare script pays before its loop: a fresh interpreter importing torch and transformers and
loading the tokenizer and the model. The machine's timings drift by ±15% from one run to the next, so (e), the
start-up, (c) and (d) run `--repeats` rounds, one of each per round; a target is the median over rounds of each
round's own ratio (a slow minute moves a round's members alike), with the ratio of the columns' medians beside it.
Test accuracy is the test split's at the evaluation that picked the best model (what `experiment` reports). The FLOP
model beside the measured speed-ups counts forward passes in token units: a training step costs 3 forward passes
(forward + backward), evaluation one, and the cache one forward over each distinct text, once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BATCH, LENGTH = 32, 64


def data(rows: int):
    import pandas as pd

    folder = common.sst2()
    return pd.read_csv(folder / "train.csv").head(rows), pd.read_csv(folder / "dev.csv"), pd.read_csv(folder / "test.csv")


def config(trainable: bool, cache: bool, epochs: int) -> dict:
    return {
        "input_features": [{
            "name": "sentence", "type": "text",
            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(common.minilm()), "trainable": trainable},
            "preprocessing": {"max_sequence_length": LENGTH, "cache_encoder_embeddings": cache},
        }],
        "output_features": [{"name": "label", "type": "category"}],
        "trainer": {"epochs": epochs, "batch_size": BATCH, "learning_rate": 1e-4 if trainable else 1e-3,
                    "optimizer": {"type": "adamw"}, "use_mixed_precision": True, "evaluate_training_set": False,
                    "early_stop": -1, "validation_field": "label", "validation_metric": "accuracy"},
    }


def train_command(work: Path, name: str, trainable: bool, cache: bool, epochs: int, cache_dir: Path) -> dict:
    """`tunefork train` in a fresh process, timed from launch to exit; phases and accuracy from the run directory."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config(trainable, cache, epochs)))
    sst2 = common.sst2()
    env = {**os.environ, "TUNEFORK_CACHE_DIR": str(cache_dir)}
    data = ["--training_set", str(work / "train.csv"), "--validation_set", str(sst2 / "dev.csv"),
            "--test_set", str(sst2 / "test.csv")]
    _, eff, stats, wall = common.train_command(path, data, work / "runs" / name, name, env)
    return {"seconds": eff["seconds"], "wall_seconds": wall, "train_examples_per_second": eff["train_examples_per_second"],
            "peak_rss_mb": eff["peak_rss_mb"], "precision": eff["precision"],
            "test_accuracy": stats["test"]["label"]["accuracy"][stats["best"]["evaluation"]],
            "embedding_cache_hit": eff.get("embedding_cache_hit")}


def _bare_setup(rows: int):
    """What the bare loop's script prepares before its loop: the distinct texts' token ids, the model, the autocast."""
    from transformers import AutoModel, AutoTokenizer

    from tunefork import hardware

    common.quiet_transformers()
    train, dev, test = data(rows)
    tokenizer = AutoTokenizer.from_pretrained(common.minilm())
    texts = sorted(set(train.sentence) | set(dev.sentence) | set(test.sentence))
    ids = tokenizer(texts, truncation=True, max_length=LENGTH)["input_ids"]
    model = AutoModel.from_pretrained(common.minilm()).eval()
    return tokenizer, texts, ids, (train, dev, test), model, hardware.detect().cpu_bf16


def _bare_loop(model, tokenizer, ids, batch_size: int, bf16: bool) -> float:
    import numpy as np
    import torch

    order = np.argsort([len(x) for x in ids], kind="stable")
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(order), batch_size):
            model(**tokenizer.pad({"input_ids": [ids[j] for j in order[i:i + batch_size]]}, return_tensors="pt"))
    return time.perf_counter() - start


def floor_sweep_case(rows: int) -> dict:
    """Which batch size the bare loop likes best (one process, so all but the first pass run on warmed-up kernels)."""
    tokenizer, texts, ids, frames, model, bf16 = _bare_setup(rows)
    sizes, timings = (32, 64, 128, 256, 512), {}
    for _ in range(2):  # two interleaved passes, the faster of each: one slow second must not pick the size
        for size in sizes:
            timings[size] = min(timings.get(size, float("inf")), _bare_loop(model, tokenizer, ids, size, bf16))
    tokens = {name: int(sum(len(x) for x in tokenizer(frame.sentence.tolist(), truncation=True, max_length=LENGTH)["input_ids"]))
              for name, frame in zip(("training", "validation", "test"), frames, strict=True)}
    return {"seconds_by_batch_size": timings, "best_batch_size": min(timings, key=timings.get), "distinct_texts": len(texts),
            "distinct_tokens": int(sum(len(x) for x in ids)), "tokens": tokens, "autocast_bf16": bf16}


def floor_case(rows: int, batch_size: int) -> dict:
    """The floor as a user's script meets it: one pass over each distinct text in a fresh process."""
    tokenizer, _, ids, _, model, bf16 = _bare_setup(rows)
    return {"seconds": _bare_loop(model, tokenizer, ids, batch_size, bf16)}


STARTUP = "import torch, transformers; p = {path!r}; transformers.AutoTokenizer.from_pretrained(p); transformers.AutoModel.from_pretrained(p)"


def startup_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", STARTUP.format(path=str(common.minilm()))], check=True, capture_output=True)
    return time.perf_counter() - start


def flop_ratio(floor: dict, epochs: int) -> dict:
    t = floor["tokens"]
    per_epoch_eval = t["validation"] + t["test"]
    full = epochs * (3 * t["training"] + per_epoch_eval)
    frozen = epochs * (t["training"] + per_epoch_eval)
    cached = floor["distinct_tokens"]
    return {"a_over_c": full / cached, "b_over_c": frozen / cached}


def median_case(runs: list[dict]) -> dict:
    """The run with the median wall time, plus every run's wall and embedding seconds."""
    ordered = sorted(runs, key=lambda r: r["wall_seconds"])
    return {**ordered[len(ordered) // 2], "wall_seconds_runs": [r["wall_seconds"] for r in runs],
            "embed_seconds_runs": [r["seconds"].get("embed", 0.0) for r in runs],
            "embed_seconds_median": statistics.median(r["seconds"].get("embed", 0.0) for r in runs)}


def epochs_block(work: Path, epochs: int, floor: dict, repeats: int) -> dict:
    cases, c_runs, d_runs, floor_runs, startups = {}, [], [], [], []
    for name, trainable in (("a", True), ("b", False)):
        print(f"{epochs} epochs: ({name}) ...", file=sys.stderr, flush=True)
        cases[name] = train_command(work, name, trainable, False, epochs, work / "no-cache")
    for i in range(repeats):  # interleaved, so a slow minute of the machine touches each kind alike
        print(f"{epochs} epochs: (e), start-up, (c), (d) — round {i + 1} of {repeats} ...", file=sys.stderr, flush=True)
        floor_runs.append(common.in_subprocess(Path(__file__), "e", "--rows", str(floor["rows"]),
                                               "--batch_size", str(floor["best_batch_size"]))["seconds"])
        startups.append(startup_seconds())
        cache = work / f"cache-{epochs}-{i}"
        c_runs.append(train_command(work, "c", False, True, epochs, cache))
        d_runs.append(train_command(work, "d", False, True, epochs, cache))
        shutil.rmtree(cache, ignore_errors=True)
    cases["c"], cases["d"] = median_case(c_runs), median_case(d_runs)
    floor_s, startup_s = statistics.median(floor_runs), statistics.median(startups)
    wall = {k: v["wall_seconds"] for k, v in cases.items()}
    # each round's own ratios: the members of a round ran within a minute of each other, so a slow minute of the
    # machine moves numerator and denominator alike; the targets take the median round
    rounds = [{"floor": f, "startup": s, "c_wall": c["wall_seconds"], "c_embed": c["seconds"]["embed"],
               "d_embed": d["seconds"]["embed"]} for f, s, c, d in zip(floor_runs, startups, c_runs, d_runs, strict=True)]
    accuracy = cases["c"]["test_accuracy"] - cases["b"]["test_accuracy"]
    return {
        "cases": cases, "floor_seconds_runs": floor_runs, "floor_seconds": floor_s,
        "startup_seconds_runs": startups, "startup_seconds": startup_s, "rounds": rounds,
        "speedup_measured": {"a_over_c": wall["a"] / wall["c"], "b_over_c": wall["b"] / wall["c"]},
        "speedup_flop_model": flop_ratio(floor, epochs),
        "targets_judged_here": repeats > 1,  # a single run is for the speed-ups; the targets need the repeats
        "targets": {**_ratios(rounds), "c_minus_b_accuracy": accuracy},
        "targets_from_medians": {**_ratios([{k: statistics.median(r[k] for r in rounds) for k in rounds[0]}]),
                                 "c_minus_b_accuracy": accuracy},
    }


def _ratios(rounds: list[dict]) -> dict:
    """The targets' ratios, each the median over rounds of that round's ratio."""
    def median(ratio) -> float:
        return statistics.median(ratio(r) for r in rounds)

    return {"c_embed_over_floor": median(lambda r: r["c_embed"] / r["floor"]),
            "c_wall_over_floor_plus_startup": median(lambda r: r["c_wall"] / (1.3 * r["floor"] + r["startup"])),
            "d_embed_over_c_embed": median(lambda r: r["d_embed"] / r["c_embed"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long_epochs", type=int, default=10, help="the second, longer setting (0: skip it)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(floor_sweep_case(args.rows) if args.case == "sweep" else floor_case(args.rows, args.batch_size)))
        return
    floor = {**common.in_subprocess(Path(__file__), "sweep", "--rows", str(args.rows)), "rows": args.rows}
    report = {"setup": {"rows": args.rows, "batch_size": BATCH, "max_sequence_length": LENGTH, "model": "all-MiniLM-L6-v2",
                        "repeats": args.repeats, "cpus": os.cpu_count()},
              "floor_sweep": floor, "epochs": {}}
    with tempfile.TemporaryDirectory(prefix="tf_bench_frozen_") as name:
        work = Path(name)
        data(args.rows)[0].to_csv(work / "train.csv", index=False)
        for epochs in (3, args.long_epochs) if args.long_epochs else (3,):
            report["epochs"][epochs] = epochs_block(work, epochs, floor, args.repeats if epochs == 3 else 1)
    print(table(report))
    print(f"saved {common.save('frozen_encoder', report)}")


def table(report: dict) -> str:
    sweep = report["floor_sweep"]
    sizes = ", ".join(f"{size}: {seconds:.2f} s" for size, seconds in sweep["seconds_by_batch_size"].items())
    lines = [f"floor sweep over {sweep['distinct_texts']} distinct texts ({sweep['distinct_tokens']} tokens; bf16 autocast "
             f"{sweep['autocast_bf16']}), seconds by batch size: {sizes} → best {sweep['best_batch_size']}", ""]
    names = {"a": "(a) full fine-tune", "b": "(b) frozen, no cache", "c": "(c) frozen + cache, cold", "d": "(d) frozen + cache, warm"}
    for epochs, block in report["epochs"].items():
        lines += [f"**{epochs} epochs** — floor (e) {block['floor_seconds']:.2f} s, start-up {block['startup_seconds']:.2f} s "
                  f"(medians of {len(block['floor_seconds_runs'])})", "",
                  "| case | preprocess s | embed s | train s | evaluate s | `train` wall s | train ex/s | peak RSS MB | test accuracy |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, case in block["cases"].items():
            s = case["seconds"]
            embed = f"{case['embed_seconds_median']:.2f}" if "embed_seconds_median" in case else "—"
            lines.append(f"| {names[key]} | {s['preprocess']:.2f} | {embed} | {s['train']:.2f} | {s['evaluate']:.2f} | "
                         f"{case['wall_seconds']:.1f} | {case['train_examples_per_second']:.0f} | {case['peak_rss_mb']:.0f} | "
                         f"{case['test_accuracy']:.4f} |")
        lines.append(f"| (e) floor: bare `model(**batch)`, batch {sweep['best_batch_size']}, fresh process | | "
                     f"{block['floor_seconds']:.2f} | | | | | | |")
        m, f, t = block["speedup_measured"], block["speedup_flop_model"], block["targets"]
        judged = "median round" if block["targets_judged_here"] else "one run of each, for the speed-ups; the targets are judged at 3 epochs"
        lines += ["", f"speed-up (a)/(c) {m['a_over_c']:.1f}× (FLOP model {f['a_over_c']:.1f}×), "
                      f"(b)/(c) {m['b_over_c']:.1f}× (FLOP model {f['b_over_c']:.1f}×)",
                  f"{judged}: (c) embed / floor {t['c_embed_over_floor']:.2f} (target ≤ 1.15); (c) wall / (1.3 × floor + "
                  f"start-up) {t['c_wall_over_floor_plus_startup']:.2f} (target ≤ 1); (d) embed / (c) embed "
                  f"{t['d_embed_over_c_embed']:.3f} (target ≤ 0.05); accuracy (c) − (b) {t['c_minus_b_accuracy']:+.4f}"]
        if block["targets_judged_here"]:
            r = block["targets_from_medians"]
            lines.append(f"the same from the medians of each column: {r['c_embed_over_floor']:.2f}, "
                         f"{r['c_wall_over_floor_plus_startup']:.2f}, {r['d_embed_over_c_embed']:.3f}")
            lines += ["", "| round | floor s | start-up s | (c) wall s | (c) embed s | (c) wall / (1.3 × floor + start-up) |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {i + 1} | {r['floor']:.2f} | {r['startup']:.2f} | {r['c_wall']:.1f} | {r['c_embed']:.2f} | "
                      f"{r['c_wall'] / (1.3 * r['floor'] + r['startup']):.2f} |" for i, r in enumerate(block["rounds"])]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
