"""The folder of Ludwig's own configs (tests/ludwig_configs/, copied from Ludwig's documentation pages and examples):
each names its source, uses only the feature types it is meant to, and is either accepted or refused in one line
naming its key; and the measuring script (benchmarks/ludwig_configs.py) trains one that is accepted for one step."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tunefork import config
from tunefork.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "tests" / "ludwig_configs"
CONFIGS = sorted(FOLDER.glob("*.yaml"))
TYPES = {"text", "category", "number", "numerical", "binary", "set"}  # "numerical": Ludwig's name before 0.5


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(ROOT))
    from benchmarks import ludwig_configs

    return ludwig_configs


def test_the_folder_holds_ludwig_configs():
    assert len(CONFIGS) >= 25


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_each_config_names_its_source_and_is_accepted_or_refused_in_one_line(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert re.match(r"# Source: https://(github\.com/ludwig-ai/|ludwig\.ai/)", first), first
    raw = config.read_yaml(path)
    features = [*raw["input_features"], *raw["output_features"]]
    assert raw.get("model_type") == "llm" or {f["type"] for f in features} <= TYPES
    try:
        config.load(raw)
    except ConfigError as exc:
        assert re.match(r"^(config: )?[\w\[\].-]+: ", exc.errors[0]), exc.errors[0]  # names the key it refuses
        assert "\n" not in str(exc)


@pytest.mark.parametrize("name", ["wine_adamw.yaml", "llm_zero_shot_classification.yaml"])
def test_the_script_trains_an_accepted_config_for_one_step_on_tiny_models(script, tiny_bert, tiny_llama, name):
    entry = script.measure(FOLDER / name, run=True, bert=tiny_bert, llama=tiny_llama)
    assert entry["validates"] and entry["ran_one_step"], entry
    assert entry["source"].startswith("https://")


def test_the_script_swaps_pretrained_names_and_says_so(script, tiny_bert, tiny_llama):
    raw = config.read_yaml(FOLDER / "llm_classification_full_finetune.yaml")
    cfg, swapped = script.for_one_step(raw, tiny_bert, tiny_llama)
    assert cfg["input_features"][0]["encoder"]["pretrained_model_name_or_path"] == str(tiny_bert)
    assert cfg["backend"] == {"type": "local"} and cfg["trainer"]["train_steps"] == 1
    assert swapped == ["title: bigscience/bloom-3b -> tiny BERT", "trainer: train_steps 1, batch_size <= 8",
                       "backend ray -> local"]
    assert raw["backend"]["type"] == "ray"  # the config itself is untouched
    data = script.synthetic_data(config.read_yaml(FOLDER / "alpaca_qlora_getting_started.yaml"))
    assert {"prompt", "output", "instruction", "input"} <= set(data.columns) and len(data) == 24
