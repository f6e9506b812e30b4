"""Frozen encoders at the cost of one forward pass: full fine-tune vs frozen vs frozen + cached embeddings.

    .venv/bin/python benchmarks/frozen_encoder.py [--rows 4000]

SST-2 (first N training rows; dev for validation; test), all-MiniLM-L6-v2, max_sequence_length 64, batch size 32
everywhere, `use_mixed_precision: true` and `evaluate_training_set: false` (the source's three settings together),
at 3 and at 10 epochs, each case in its own process:
  (a) full fine-tune; (b) frozen, no cache; (c) frozen + cache, cold; (d) the same again, warm;
  (e) the floor: a bare `model(**batch)` loop under inference_mode over the same distinct texts, length-sorted,
      at its best batch size, with the same autocast.
The FLOP model beside the measured speed-ups counts forward passes in token units: a training step costs 3 forward
passes (forward + backward), evaluation one, and the cache one forward over each distinct text, once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BATCH, LENGTH, SEED = 32, 64, 42


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


def train_case(trainable: bool, cache: bool, epochs: int, cache_dir: str) -> dict:
    import os

    start = time.perf_counter()
    os.environ["TUNEFORK_CACHE_DIR"] = cache_dir
    from tunefork import Model

    imported = time.perf_counter()
    train, dev, test = data(args_rows)
    with tempfile.TemporaryDirectory() as tmp:
        model = Model(config(trainable, cache, epochs), quiet=True)
        result, test_stats = model.experiment(training_set=train, validation_set=dev, test_set=test, output_directory=tmp)
    eff = result.efficiency
    return {"seconds": eff["seconds"], "wall_seconds": time.perf_counter() - start, "import_seconds": imported - start,
            "train_examples_per_second": eff["train_examples_per_second"], "peak_rss_mb": eff["peak_rss_mb"],
            "precision": eff["precision"], "test_accuracy": test_stats["label"]["accuracy"],
            "embedding_cache_hit": eff.get("embedding_cache_hit")}


def floor_case() -> dict:
    """The physical floor: each distinct text through the encoder once, best batch size, nothing else timed."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tunefork import hardware

    common.quiet_transformers()
    train, dev, test = data(args_rows)
    path = common.minilm()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts = sorted(set(train.sentence) | set(dev.sentence) | set(test.sentence))
    ids = tokenizer(texts, truncation=True, max_length=LENGTH)["input_ids"]
    order = np.argsort([len(x) for x in ids], kind="stable")
    bf16 = hardware.detect().cpu_bf16
    timings = {}
    for batch_size in (32, 64, 128, 256):
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, len(order), batch_size):
                batch = tokenizer.pad({"input_ids": [ids[j] for j in order[i:i + batch_size]]}, return_tensors="pt")
                model(**batch)
        timings[batch_size] = time.perf_counter() - start
    best = min(timings, key=timings.get)
    tokens = {name: int(sum(len(x) for x in tokenizer(frame.sentence.tolist(), truncation=True, max_length=LENGTH)["input_ids"]))
              for name, frame in (("training", train), ("validation", dev), ("test", test))}
    return {"seconds_by_batch_size": timings, "best_batch_size": best, "seconds": timings[best], "distinct_texts": len(texts),
            "distinct_tokens": int(sum(len(x) for x in ids)), "tokens": tokens, "autocast_bf16": bf16}


def startup_case() -> dict:
    start = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import tunefork.api  # noqa: F401

    return {"seconds": time.perf_counter() - start}


def flop_ratio(floor: dict, epochs: int) -> dict:
    t = floor["tokens"]
    per_epoch_eval = t["validation"] + t["test"]
    full = epochs * (3 * t["training"] + per_epoch_eval)
    frozen = epochs * (t["training"] + per_epoch_eval)
    cached = floor["distinct_tokens"]
    return {"a_over_c": full / cached, "b_over_c": frozen / cached}


args_rows = 4000


def main() -> None:
    global args_rows
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache_dir")
    args = parser.parse_args()
    args_rows = args.rows
    if args.case:
        run = {"a": lambda: train_case(True, False, args.epochs, args.cache_dir),
               "b": lambda: train_case(False, False, args.epochs, args.cache_dir),
               "c": lambda: train_case(False, True, args.epochs, args.cache_dir),
               "e": floor_case, "startup": startup_case}[args.case]
        print(json.dumps(run()))
        return
    me = Path(__file__)
    base = ["--rows", str(args.rows)]
    floor = common.in_subprocess(me, "e", *base)
    startup = common.in_subprocess(me, "startup", *base)
    report = {"setup": {"rows": args.rows, "batch_size": BATCH, "max_sequence_length": LENGTH, "model": "all-MiniLM-L6-v2"},
              "floor": floor, "startup": startup, "epochs": {}}
    for epochs in (3, 10):
        cache = tempfile.mkdtemp(prefix="tf_bench_cache_")
        try:
            flags = [*base, "--epochs", str(epochs), "--cache_dir", cache]
            cases = {"a": common.in_subprocess(me, "a", *flags), "b": common.in_subprocess(me, "b", *flags),
                     "c": common.in_subprocess(me, "c", *flags), "d": common.in_subprocess(me, "c", *flags)}
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        wall = {k: v["wall_seconds"] for k, v in cases.items()}
        report["epochs"][epochs] = {
            "cases": cases,
            "speedup_measured": {"a_over_c": wall["a"] / wall["c"], "b_over_c": wall["b"] / wall["c"]},
            "speedup_flop_model": flop_ratio(floor, epochs),
            "targets": {
                "c_embed_over_floor": cases["c"]["seconds"]["embed"] / floor["seconds"],
                "c_wall_over_floor_plus_startup": cases["c"]["wall_seconds"] / (1.3 * floor["seconds"] + startup["seconds"]),
                "d_embed_over_c_embed": cases["d"]["seconds"]["embed"] / cases["c"]["seconds"]["embed"],
                "c_minus_b_accuracy": cases["c"]["test_accuracy"] - cases["b"]["test_accuracy"],
            },
        }
    print(table(report))
    print(f"saved {common.save('frozen_encoder', report)}")


def table(report: dict) -> str:
    floor = report["floor"]
    lines = [f"floor (e): {floor['distinct_texts']} distinct texts in {floor['seconds']:.2f} s "
             f"(batch {floor['best_batch_size']}, bf16 autocast {floor['autocast_bf16']}); process start-up {report['startup']['seconds']:.2f} s", ""]
    for epochs, block in report["epochs"].items():
        lines += [f"**{epochs} epochs**", "", "| case | read | preprocess | embed | train | evaluate | wall s | train ex/s | peak RSS MB | test acc |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        names = {"a": "(a) full fine-tune", "b": "(b) frozen, no cache", "c": "(c) frozen + cache, cold", "d": "(d) frozen + cache, warm"}
        for key, case in block["cases"].items():
            s = case["seconds"]
            lines.append(f"| {names[key]} | {s['read']:.2f} | {s['preprocess']:.2f} | {s.get('embed', 0):.2f} | {s['train']:.2f} | "
                         f"{s['evaluate']:.2f} | {case['wall_seconds']:.1f} | {case['train_examples_per_second']:.0f} | "
                         f"{case['peak_rss_mb']:.0f} | {case['test_accuracy']:.4f} |")
        m, f, t = block["speedup_measured"], block["speedup_flop_model"], block["targets"]
        lines += ["", f"speed-up (a)/(c) {m['a_over_c']:.1f}× (FLOP model {f['a_over_c']:.1f}×), "
                      f"(b)/(c) {m['b_over_c']:.1f}× (FLOP model {f['b_over_c']:.1f}×)",
                  f"(c) embed / floor {t['c_embed_over_floor']:.2f} (target ≤ 1.15); (c) wall / (1.3 × floor + start-up) "
                  f"{t['c_wall_over_floor_plus_startup']:.2f} (target ≤ 1); (d) embed / (c) embed {t['d_embed_over_c_embed']:.3f} "
                  f"(target ≤ 0.05); accuracy (c) − (b) {t['c_minus_b_accuracy']:+.4f}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
