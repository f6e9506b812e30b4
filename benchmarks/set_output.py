"""A multi-label `set` output on real data: Debian package descriptions → their debtags.

    .venv/bin/python benchmarks/set_output.py [--epochs 5] [--labels 40] [--rows 0]

The data is Debian's own: `apt-cache dumpavail` (the package index that `apt-get update` fetched from the Debian
archive, bookworm here) lists every package with its `Description` and, for about 30,000 of them, the `Tag` field of
debtags, a hand-curated multi-label classification (facets such as `role::program`, `implemented-in::c`,
`interface::commandline`). Each tagged package is one row: `text` is the package name and its one-line description,
`tags` its tags joined by commas; the split is fixed by a hash of the name (80 / 10 / 10). The table is built into a
cache folder on each run and never committed.

The config is what a Ludwig user writes: a text input with the `embed` encoder (a bag of words), a `set` output with
`tokenizer: comma` and the `--labels` most common tags, validation on jaccard. Beside it, the baseline one writes
without a model: every test row gets the training split's most frequent tag set. Both are scored by the same code
(`tunefork.features.metrics.multilabel`: jaccard, micro and macro F1 / precision / recall from torchmetrics).
Results are printed and saved to benchmarks/results/set_output.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CACHE = Path.home() / ".cache" / "tunefork-benchmarks"


def records(index: str):
    """(package, description, tags) of every package in an `apt-cache dumpavail` listing that has debtags."""
    for block in index.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith(" ") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Tag") and fields.get("Description") and fields.get("Package"):
            tags = [t.strip() for t in fields["Tag"].split(",") if t.strip()]
            yield fields["Package"], fields["Description"], tags


def build() -> Path:
    import pandas as pd

    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True)
    if out.returncode != 0 or "Tag:" not in out.stdout:
        sys.exit("needs Debian's package index with debtags: run `apt-get update` first")
    seen, rows = set(), []
    for package, description, tags in records(out.stdout):
        if package in seen:  # a package listed by two suites: its first entry
            continue
        seen.add(package)
        bucket = int(hashlib.blake2b(package.encode(), digest_size=4).hexdigest(), 16) % 10
        rows.append({"text": f"{package}: {description}", "tags": ",".join(sorted(set(tags))),
                     "split": 0 if bucket < 8 else (1 if bucket == 8 else 2)})
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "debtags.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def config(labels: int, epochs: int) -> dict:
    return {
        "input_features": [{"name": "text", "type": "text", "encoder": {"type": "embed"}}],
        "output_features": [{"name": "tags", "type": "set", "preprocessing": {"tokenizer": "comma", "most_common": labels}}],
        "preprocessing": {"split": {"type": "fixed", "column": "split"}},
        "trainer": {"epochs": epochs, "batch_size": 128, "learning_rate": 0.001, "optimizer": {"type": "adam"},
                    "evaluate_training_set": False, "early_stop": -1, "validation_field": "tags",
                    "validation_metric": "jaccard"},
    }


def frequency_baseline(frame, labels: int) -> dict:
    """Every test row gets the training split's most frequent set of tags (among the `labels` most common)."""
    import numpy as np

    from tunefork.features.metrics import multilabel

    train, test = frame[frame.split == 0], frame[frame.split == 2]
    kept = [t for t, _ in Counter(t for row in train.tags for t in row.split(",")).most_common(labels)]
    sets = train.tags.map(lambda row: tuple(sorted(t for t in row.split(",") if t in kept)))
    mode = set(Counter(sets).most_common(1)[0][0])
    truth = np.array([[t in row.split(",") for t in kept] for row in test.tags])
    guess = np.tile([t in mode for t in kept], (len(test), 1))
    return {"predicted_set": sorted(mode), **multilabel(truth, guess)}


def main() -> None:
    import pandas as pd

    from tunefork import Model

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--labels", type=int, default=40)
    parser.add_argument("--rows", type=int, default=0, help="first N rows only (0: all)")
    args = parser.parse_args()
    frame = pd.read_csv(build(), keep_default_na=False)
    if args.rows:
        frame = frame.head(args.rows)
    model = Model(config(args.labels, args.epochs), progress=False, quiet=True)
    start = time.perf_counter()
    result, test = model.experiment(frame, output_directory=str(CACHE / "runs"))
    wall = time.perf_counter() - start
    eff = json.loads((result.output_directory / "efficiency.json").read_text())
    scores = {k: v for k, v in test["tags"].items() if isinstance(v, float)}
    data = {"data": f"Debian bookworm debtags via apt-cache dumpavail: {len(frame)} packages, "
                    f"{int((frame.split == 0).sum())} / {int((frame.split == 1).sum())} / {int((frame.split == 2).sum())} rows",
            "labels": args.labels, "epochs": args.epochs, "seconds_per_epoch": eff["seconds"]["train"] / args.epochs,
            "wall_seconds": wall, "tunefork_embed": scores, "baseline_most_frequent_set": frequency_baseline(frame, args.labels)}
    print(json.dumps(data, indent=2))
    if not args.rows:
        print(f"saved {common.save('set_output', data)}")


if __name__ == "__main__":
    main()
