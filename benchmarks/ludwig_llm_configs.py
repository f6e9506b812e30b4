"""Of the complete configs on Ludwig's LLM, fine-tuning and PEFT pages, the share that validates and the share that
trains one step, with the reason for each failure.

    .venv/bin/python benchmarks/ludwig_llm_configs.py [--only NAME]

Each YAML file in benchmarks/ludwig_llm_configs/ is a config as a Ludwig page writes it (the first comment names
the page). It is run as written except for what a machine without the hub needs: every model id becomes a local
tiny model (causal LMs → the tests' tiny Llama, BERT ids → the tiny BERT), and the trainer is cut to one optimizer
step of 4 rows (`trainer.train_steps: 1`). The data is a small table with every column the config reads. A config
"validates" when `tunefork.config.load` accepts it, and "runs" when `Model.train` finishes that step. Results, with
each failure's one-line reason, go to benchmarks/results/ludwig_llm_configs.json; re-run it as other keys land.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FOLDER = Path(__file__).resolve().parent / "ludwig_llm_configs"


def tiny_models(root: Path) -> dict[str, Path]:
    sys.path.insert(0, str(common.ROOT / "tests"))
    import tiny

    return {"llm": tiny.build_llama(root / "llama", pad_token=True), "bert": tiny.build_bert(root / "bert")}


def localised(raw: dict, models: dict[str, Path]) -> dict:
    """The config with every model id replaced by a tiny local model and the trainer cut to one step."""
    config = json.loads(json.dumps(raw))
    if "base_model" in config:
        config["base_model"] = str(models["llm"])
    for feature in config.get("input_features", []):
        encoder = feature.get("encoder")
        if isinstance(encoder, dict):
            for key in ("base_model", "pretrained_model_name_or_path"):
                if key in encoder:
                    encoder[key] = str(models["bert" if "bert" in str(encoder[key]).lower() else "llm"])
    trainer = config.setdefault("trainer", {})
    if isinstance(trainer, dict) and trainer.get("type", "finetune") == "finetune":
        trainer.update(train_steps=1, batch_size=4)
        trainer.pop("gradient_accumulation_steps", None)
    return config


def frame_for(raw: dict):
    """A table with each column the config reads: text inputs, the output, and any prompt template column."""
    import string

    sys.path.insert(0, str(common.ROOT / "tests"))
    import tiny

    base = tiny.sentiment_frame(32, seed=1)
    columns = {}
    for feature in raw.get("input_features", []):
        columns[feature.get("column") or feature["name"]] = base["review"]
    for feature in raw.get("output_features", []):
        columns[feature.get("column") or feature["name"]] = base["sentiment"]
    template = (raw.get("prompt") or {}).get("template")
    if template:
        for _, name, _, _ in string.Formatter().parse(template):
            if name and not name.startswith("__"):
                columns.setdefault(name, base["review"])
    import pandas as pd

    return pd.DataFrame(columns)


def check(path: Path, models: dict[str, Path]) -> dict:
    from tunefork import Model
    from tunefork import config as config_mod
    from tunefork.errors import first_line

    raw = yaml.safe_load(path.read_text())
    source = path.read_text().splitlines()[0].removeprefix("# ")
    config = localised(raw, models)
    out = {"config": path.name, "source": source, "validates": False, "runs": False, "reason": None}
    try:
        config_mod.load(config)
        out["validates"] = True
        with tempfile.TemporaryDirectory() as tmp:
            Model(config, progress=False, quiet=True).train(frame_for(raw), output_directory=tmp)
        out["runs"] = True
    except Exception as exc:  # every failure is a finding: its first line is the reason
        out["reason"] = f"{type(exc).__name__}: {first_line(exc)}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run one config file (its name)")
    args = parser.parse_args()
    common.quiet_transformers()
    paths = sorted(FOLDER.glob("*.yaml"))
    if args.only:
        paths = [p for p in paths if p.name == args.only]
    with tempfile.TemporaryDirectory() as root:
        models = tiny_models(Path(root))
        results = [check(path, models) for path in paths]
    for r in results:
        status = "runs" if r["runs"] else "validates only" if r["validates"] else "refused"
        print(f"{r['config']:45s} {status:15s} {r['reason'] or ''}")
    count = len(results)
    summary = {"configs": count,
               "validates": sum(r["validates"] for r in results), "runs": sum(r["runs"] for r in results)}
    summary.update(validates_share=round(summary["validates"] / count, 3), runs_share=round(summary["runs"] / count, 3))
    print(json.dumps(summary))
    if not args.only:
        common.save("ludwig_llm_configs", {**summary, "results": results})


if __name__ == "__main__":
    main()
