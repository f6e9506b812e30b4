"""The LLM part of benchmarks/serve.py: SmolLM2 served to 16 concurrent callers against one batched `generate`.

A zero-shot `model_type: llm` folder of SmolLM2-135M-Instruct (greedy, LLM_TOKENS new tokens, eval_batch_size 16);
16 alpaca_demo test instructions. Baseline, in a fresh process: the loaded model's own `generate` of the 16 prompts as
one left-padded batch (after a warm-up). Served: `tunefork serve` on the folder, 16 /predict requests sent at once
(after a warm-up request). Tokens are counted alike on both sides: each response re-tokenized by the model's
tokenizer; greedy decoding makes the two sides' texts the same.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import common
import serve as bench
from llm_finetune import model_path

PROMPTS, TOKENS = bench.LLM_PROMPTS, bench.LLM_TOKENS
TEMPLATE = "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"


def instructions() -> list[dict]:
    import pandas as pd

    test = pd.read_json(common.DATA / "alpaca_demo" / "test.jsonl", lines=True, dtype=False)
    return [{"instruction": text} for text in test["instruction"].head(PROMPTS)]


def folder(tmp: Path) -> Path:
    from tunefork import Model

    base, _ = model_path()
    config = {"model_type": "llm", "base_model": str(base), "input_features": [{"name": "instruction", "type": "text"}],
              "output_features": [{"name": "output", "type": "text"}], "prompt": {"template": TEMPLATE},
              "generation": {"max_new_tokens": TOKENS}, "trainer": {"eval_batch_size": PROMPTS}}
    return Model(config, quiet=True).save(tmp / "smollm2")


def tokens(model_folder: Path, responses: list[str]) -> int:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_folder / "tokenizer" / "tokenizer.json"))
    return sum(len(e.ids) for e in tokenizer.encode_batch(responses, add_special_tokens=False))


def bare(model_folder: Path) -> dict:
    import pandas as pd

    from tunefork import Model

    fitted = Model.load(model_folder).fitted
    frame = pd.DataFrame(instructions())
    fitted.generate(frame.head(2))  # warm-up
    start = time.perf_counter()
    responses = fitted.generate(frame)
    seconds = time.perf_counter() - start
    return {"responses": responses, "seconds": seconds, "generate_calls_rows": fitted.last_generation["rows"]}


def client(url: str) -> dict:
    import asyncio

    import httpx

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            await http.post("/predict", json=instructions()[0])  # warm-up
            start = time.perf_counter()
            answers = await asyncio.gather(*(http.post("/predict", json=row) for row in instructions()))
            seconds = time.perf_counter() - start
            return answers, seconds, (await http.get("/metrics")).text

    answers, seconds, metrics = asyncio.run(main())
    return {"statuses": [a.status_code for a in answers], "seconds": seconds,
            "responses": [a.json().get("output_response") for a in answers], "generate_calls": passes(metrics)}


def passes(metrics: str) -> dict:
    """The server's forward passes (its tunefork_batch_rows histogram), the warm-up's included."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {s.name: s.value for family in text_string_to_metric_families(metrics) for s in family.samples
             if s.name in ("tunefork_batch_rows_count", "tunefork_batch_rows_sum")}
    return {"passes": int(found.get("tunefork_batch_rows_count", 0)), "rows": int(found.get("tunefork_batch_rows_sum", 0))}


def measure(tmp: Path, served_flags: tuple = ()) -> dict:
    model_folder = folder(tmp)
    baseline = common.in_subprocess(Path(__file__), "bare", str(model_folder))
    server = bench.served(model_folder, *served_flags,
                          client=lambda url: common.in_subprocess(Path(__file__), "client", url))
    return summary(model_folder, baseline, server["client"], server)


def summary(model_folder: Path, baseline: dict, answered: dict, server: dict) -> dict:
    bare_tokens, served_tokens = tokens(model_folder, baseline["responses"]), tokens(model_folder, answered["responses"])
    bare_rate, served_rate = bare_tokens / baseline["seconds"], served_tokens / answered["seconds"]
    return {"model": "SmolLM2-135M-Instruct, zero-shot, greedy", "prompts": PROMPTS, "max_new_tokens": TOKENS,
            "server_flags": server["flags"], "bare_tokens": bare_tokens, "bare_seconds": baseline["seconds"],
            "bare_tokens_per_second": bare_rate, "served_tokens": served_tokens, "served_seconds": answered["seconds"],
            "served_tokens_per_second": served_rate, "ratio": served_rate / bare_rate,
            "failures": sum(s != 200 for s in answered["statuses"]),
            "server_generate_calls_with_warm_up": answered.get("generate_calls"),
            "same_texts": baseline["responses"] == answered["responses"]}


if __name__ == "__main__":
    common.quiet_transformers()
    case, argument = sys.argv[sys.argv.index("--case") + 1], sys.argv[-1]
    print(json.dumps(bare(Path(argument)) if case == "bare" else client(argument)))
