"""How many of Ludwig's own configs run unchanged: every config in tests/ludwig_configs/ (copied from Ludwig's
documentation pages and its repository's examples/, the source named at the top of each file) that uses only text,
category, number, binary and set features, or `model_type: llm`.

For each config: does it validate (`tunefork.config.load`, the config exactly as Ludwig's page has it), and, when it
does, does it train for one step? For the run, and only for it, what this machine cannot hold is swapped and said:
pretrained names become tiny local models (a 2-layer BERT for text encoders, a 2-layer Llama for `base_model`),
`trainer.train_steps` is 1 with batches of at most 8 rows, a Ray backend runs locally, and the data is a table of
24 synthetic rows with the columns the config reads. Each failure keeps the one line tunefork said.

    python benchmarks/ludwig_configs.py            # validate and run one step: ~1 minute on 2 CPU cores
    python benchmarks/ludwig_configs.py --no-run   # validate only: a second

Writes benchmarks/results/ludwig_configs.json. There is no baseline to run side by side: the comparison is Ludwig
itself, which accepts each of these configs by construction (they are its own).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "ludwig_configs"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks.common import save  # noqa: E402

PRETRAINED_KEYS = ("pretrained_model_name_or_path",)
WORDS = "good bad film movie great awful plot acting story boring fun dull loved hated scene".split()


def source_of(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return first.removeprefix("# Source:").strip()


def _features(raw: dict):
    for key in ("input_features", "output_features"):
        for feature in raw.get(key) or []:
            if isinstance(feature, dict):
                yield feature


def _values(feature: dict, rows: int, rng) -> list:
    kind = feature.get("type")
    if kind in ("number", "numerical"):
        return rng.normal(size=rows).round(3).tolist()
    if kind == "binary":
        return [bool(v) for v in rng.integers(0, 2, rows)]
    if kind == "set":
        sep = "," if (feature.get("preprocessing") or {}).get("tokenizer") == "comma" else " "
        return [sep.join(rng.choice(["drama", "comedy", "action"], 2, replace=False)) for _ in range(rows)]
    if kind == "text":
        return [" ".join(rng.choice(WORDS, 6)) for _ in range(rows)]
    return [str(v) for v in rng.choice(["negative", "neutral", "positive"], rows)]  # category and anything else


def synthetic_data(raw: dict, rows: int = 24):
    """A table with every column the config reads: features (by `column` or name), prompt placeholders, split."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    columns = {}
    for feature in _features(raw):
        columns[feature.get("column") or feature["name"]] = _values(feature, rows, rng)
    template = ((raw.get("prompt") or {}).get("template") or "") if isinstance(raw.get("prompt"), dict) else ""
    for name in re.findall(r"{(\w+)}", template):
        columns.setdefault(name, [" ".join(rng.choice(WORDS, 5)) for _ in range(rows)])
    split = (raw.get("preprocessing") or {}).get("split") or {}
    if isinstance(split, dict) and split.get("type") == "fixed":
        columns[split.get("column", "split")] = [0] * (rows - 8) + [1] * 4 + [2] * 4
    return pd.DataFrame(columns)


def for_one_step(raw: dict, bert: Path, llama: Path) -> tuple[dict, list[str]]:
    """The config as run here: tiny models for pretrained names, one step, small batches, a local backend."""
    cfg, swapped = copy.deepcopy(raw), []
    if cfg.get("model_type") == "llm" and "base_model" in cfg:
        swapped.append(f"base_model {cfg['base_model']} -> tiny Llama")
        cfg["base_model"] = str(llama)
    for feature in _features(cfg):
        encoder = feature.get("encoder")
        if isinstance(encoder, dict) and encoder.get("type") == "llm":  # Ludwig's LLM encoder: a causal LM
            swapped.append(f"{feature['name']}: {encoder.get('base_model')} -> tiny Llama")
            encoder["base_model"] = str(llama)
            continue
        if isinstance(encoder, dict) and any(k in encoder for k in PRETRAINED_KEYS) or (
                isinstance(encoder, dict) and encoder.get("type") in ("bert", "auto_transformer")):
            swapped.append(f"{feature['name']}: {encoder.get('pretrained_model_name_or_path', encoder['type'])} -> tiny BERT")
            encoder["type"] = "auto_transformer"
            encoder["pretrained_model_name_or_path"] = str(bert)
    trainer = cfg.setdefault("trainer", {}) if isinstance(cfg.get("trainer", {}), dict) else {}
    if trainer.get("type") != "none":
        trainer.update(train_steps=1, epochs=1)
        if not isinstance(trainer.get("batch_size"), int) or trainer["batch_size"] > 8:
            trainer["batch_size"] = 8
        swapped.append("trainer: train_steps 1, batch_size <= 8")
    backend = cfg.get("backend")
    if isinstance(backend, dict) and backend.get("type") == "ray":
        cfg["backend"] = {"type": "local"}
        swapped.append("backend ray -> local")
    return cfg, swapped


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if "\n" not in text else " | ".join(line.strip() for line in text.splitlines() if line.strip())


def measure(path: Path, run: bool, bert: Path | None = None, llama: Path | None = None) -> dict:
    from tunefork import config
    from tunefork.api import Model

    raw = config.read_yaml(path)
    entry = {"file": path.name, "source": source_of(path), "model_type": raw.get("model_type", "ecd")}
    try:
        config.load(raw)
        entry.update(validates=True, error=None)
    except Exception as exc:  # a ConfigError says why in one line; anything else is reported as it is
        entry.update(validates=False, error=_one_line(exc))
    if not (run and entry["validates"]):
        return entry
    cfg, entry["swapped_for_the_run"] = for_one_step(raw, bert, llama)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as out:
            Model(cfg, progress=False, quiet=True).train(synthetic_data(raw), output_directory=out,
                                                          skip_save_model=True)
        entry.update(ran_one_step=True, run_error=None)
    except Exception as exc:
        entry.update(ran_one_step=False, run_error=_one_line(exc))
    entry["run_seconds"] = round(time.perf_counter() - started, 2)
    return entry


def summary(entries: list[dict], run: bool) -> dict:
    n = len(entries)
    valid = sum(e["validates"] for e in entries)
    out = {"configs": n, "validated": valid, "share_validated": round(valid / n, 3) if n else None}
    if run:
        ran = sum(bool(e.get("ran_one_step")) for e in entries)
        out.update(ran_one_step=ran, share_ran_one_step=round(ran / n, 3) if n else None)
    for kind in ("ecd", "llm"):
        part = [e for e in entries if e["model_type"] == kind]
        out[f"{kind}_validated"] = f"{sum(e['validates'] for e in part)} of {len(part)}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="validate only")
    args = parser.parse_args()
    run = not args.no_run
    bert = llama = None
    folder = tempfile.TemporaryDirectory()
    if run:
        import tiny

        from benchmarks.common import quiet_transformers

        quiet_transformers()
        bert, llama = tiny.build_bert(Path(folder.name) / "bert"), tiny.build_llama(Path(folder.name) / "llama")
    entries = [measure(path, run, bert, llama) for path in sorted(CONFIGS.glob("*.yaml"))]
    report(entries, run, "ludwig_configs")


def report(entries: list[dict], run: bool, name: str) -> None:
    """A line per config (valid or refused, and whether its step ran), the summary, and results/<name>.json."""
    result = {**summary(entries, run), "results": entries}
    for e in entries:
        verdict = "valid" if e["validates"] else f"refused: {e['error']}"
        if e.get("ran_one_step") is not None:
            verdict += "; one step ran" if e["ran_one_step"] else f"; the step failed: {e['run_error']}"
        print(f"{e['file']}: {verdict}")
    print(json.dumps({k: v for k, v in result.items() if k != "results"}, indent=2))
    print(f"written to {save(name, result)}")


if __name__ == "__main__":
    main()
