"""DPO that visibly changes a model: SmolLM2-135M-Instruct preference-tuned (LoRA) towards positive movie reviews.

    .venv/bin/python benchmarks/dpo_sst2.py [--pairs 480] [--heldout 100] [--samples 100] [--epochs 1]

Pairs from SST-2 (../shared/data/sst2/train.csv, sentences of 8 words or more): the prompt "Write a positive movie
review:" in SmolLM2's chat format, a positive sentence chosen, a negative one rejected; --pairs for training, the next
--heldout pairs (sentences the training never saw) for validation. DPO (sigmoid, beta 0.1) with LoRA r 8 / alpha 16
/ dropout 0 on peft's default modules, AdamW lr 2e-4, batch 8 pairs, --epochs epochs, seed 42; the reference is the
base model (the adapter disabled).

Before and after: --samples generations sampled from the prompt (temperature 1.0, top-k 50, top-p 0.95, 48 new
tokens, torch seed 0 for both), each scored by the MiniLM SST-2 classifier of `make demo` (results/demo_sst2*, trained
here with the demo's config when absent). Reported: the positive rate before and after, the held-out pairs' reward
accuracy (chosen reward above rejected: 0.5 is chance) and margin, and a few generations. Saved to
benchmarks/results/dpo_sst2.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from llm_finetune import model_path  # noqa: E402

PROMPT = "Write a positive movie review:"
TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 50, "top_p": 0.95, "max_new_tokens": 48}


def classifier():
    """The `make demo` classifier (MiniLM fine-tuned on SST-2), trained once with the demo's own config if absent."""
    from tunefork import Model

    def found():
        runs = sorted((common.ROOT / "results").glob("demo_sst2*/model"), key=lambda p: p.stat().st_mtime)
        return runs[-1].parent if runs else None

    if found() is None:
        sys.path.insert(0, str(common.ROOT / "examples"))
        import demo

        demo.main()
    return Model.load(found(), quiet=True), found()


def pairs(args):
    import pandas as pd

    frame = pd.read_csv(common.sst2() / "train.csv")
    frame = frame[frame.sentence.str.split().str.len() >= 8].sample(frac=1.0, random_state=42)
    good = frame[frame.label == "positive"].sentence.str.strip().tolist()
    bad = frame[frame.label == "negative"].sentence.str.strip().tolist()
    n = args.pairs + args.heldout
    table = pd.DataFrame({"prompt": [PROMPT] * n, "chosen": good[:n], "rejected": bad[:n]})
    return table.iloc[: args.pairs], table.iloc[args.pairs :]


def config(folder: Path, trained: bool, epochs: int) -> dict:
    out = {"model_type": "llm", "base_model": str(folder),
           "input_features": [{"name": "prompt", "type": "text"}],
           "output_features": [{"name": "chosen", "type": "text"}],
           "prompt": {"template": TEMPLATE}, "generation": SAMPLING,
           "preprocessing": {"global_max_sequence_length": 96}}
    if trained:
        out["adapter"] = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}
        out["trainer"] = {"type": "dpo", "beta": 0.1, "epochs": epochs, "batch_size": 8, "eval_batch_size": 16,
                          "learning_rate": 2e-4, "optimizer": {"type": "adamw"}, "early_stop": -1}
    return out


def sample(model, n: int) -> list[str]:
    import pandas as pd
    import torch

    torch.manual_seed(0)
    column = model.config.output.name
    return model.predict(pd.DataFrame({"prompt": [PROMPT] * n}))[f"{column}_response"].tolist()


def positive_rate(judge, texts: list[str]) -> float:
    import pandas as pd

    labels = judge.predict(pd.DataFrame({"sentence": texts}))["label_predictions"]
    return float((labels == "positive").mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=480)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    import torch

    from tunefork import Model

    common.quiet_transformers()
    torch.set_num_threads(2)
    judge, judge_path = classifier()
    folder, described = model_path()
    train, heldout = pairs(args)
    before = sample(Model(config(folder, False, args.epochs), quiet=True), args.samples)
    tuned = Model(config(folder, True, args.epochs), quiet=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = tuned.train(training_set=train, validation_set=heldout, output_directory=tmp)
    seconds = time.perf_counter() - start
    after = sample(tuned, args.samples)
    held = result.statistics["validation"]["chosen"]
    out = {"model": described, "classifier": str(judge_path), "train_pairs": len(train), "heldout_pairs": len(heldout),
           "samples": args.samples, "epochs": args.epochs, "steps": result.plan["total_steps"]["value"],
           "train_seconds": round(result.efficiency["seconds"]["train"], 1), "wall_seconds": round(seconds, 1),
           "positive_rate_before": positive_rate(judge, before), "positive_rate_after": positive_rate(judge, after),
           "heldout_reward_accuracy": held["rewards/accuracies"][-1], "heldout_reward_margin": held["rewards/margins"][-1],
           "heldout_loss": held["loss"][-1], "examples_before": before[:3], "examples_after": after[:3]}
    print(f"positive rate {out['positive_rate_before']:.2f} → {out['positive_rate_after']:.2f}; held-out reward "
          f"accuracy {out['heldout_reward_accuracy']:.3f}, margin {out['heldout_reward_margin']:.3f}; "
          f"{out['steps']} steps in {out['train_seconds']} s")
    print(f"saved: {common.save('dpo_sst2', out)}")


if __name__ == "__main__":
    main()
