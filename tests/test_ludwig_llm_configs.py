"""A table of Ludwig-format LLM and adapter configs, one per capability, written from Ludwig's pages (the LLM
configuration page, "Advanced PEFT Adapters", "Multi-Adapter PEFT", "Text Classification" with an LLM encoder):
each validates as written (model ids aside: the tiny local models stand in) and trains one optimizer step.
The per-method save / load / merge checks are in test_peft_methods.py and test_adapters.py."""

from __future__ import annotations

import math

import pytest
import tiny
import yaml

pytest.importorskip("peft")

from tunefork import Model  # noqa: E402
from tunefork import config as config_mod  # noqa: E402

LLM = """
model_type: llm
base_model: {llm}
input_features: [{{name: input, type: text}}]
output_features: [{{name: response, type: text}}]
trainer: {{type: finetune, epochs: 3, learning_rate: 1e-4, train_steps: 1, batch_size: 4}}
"""
# capability → the adapter section as Ludwig writes it (sizes fitted to the tiny model's 32-wide layers)
ADAPTERS = {
    "pissa": "{type: lora, r: 16, alpha: 16, init_lora_weights: pissa}",
    "corda": "{type: lora, r: 16, alpha: 16, init_lora_weights: corda}",
    "eva": "{type: lora, r: 8, init_lora_weights: eva, eva_config: {rho: 2.0}}",
    "olora": "{type: lora, r: 8, init_lora_weights: olora}",
    "dora_rslora": "{type: lora, r: 8, use_dora: true, use_rslora: true}",
    "rank_pattern": "{type: lora, r: 8, rank_pattern: {q_proj: 4}, alpha_pattern: {q_proj: 8}}",
    "ln_tuning": "{type: ln_tuning}",
    "oft": "{type: oft, oft_block_size: 8}",
    "boft": "{type: boft, boft_block_size: 4}",
    "hra": "{type: hra, r: 4}",
    "vblora": "{type: vblora, num_vectors: 16, vector_length: 16}",
    "fourierft": "{type: fourierft, n_frequency: 64}",
    "waveft": "{type: waveft, n_frequency: 64}",
    "tinylora": "{type: tinylora, u: 8}",
}
ENCODERS = {
    # "Text Classification" page's agnews config, without the quantization that needs CUDA
    "llm_encoder": "{type: llm, adapter: {type: lora}, base_model: %(llm)s}",
    "mamba2_encoder": "{type: mamba2, pretrained_model_name_or_path: %(mamba2)s, trainable: true}",
}
FRAME = tiny.sentiment_frame(16, seed=9)


@pytest.fixture(scope="module")
def models(tiny_llama_padded, tmp_path_factory) -> dict:
    return {"llm": str(tiny_llama_padded), "mamba2": str(tiny.build_mamba(tmp_path_factory.mktemp("mamba2"), 2))}


def one_step(config: dict, frame, tmp_path):
    config_mod.load(config)  # validates as written
    result = Model(config, progress=False, quiet=True).train(frame, output_directory=tmp_path)
    assert (result.output_directory / "model").is_dir()
    return result


@pytest.mark.parametrize("capability", ADAPTERS)
def test_ludwig_adapter_config_validates_and_trains_one_step(capability, models, tmp_path):
    config = yaml.safe_load(LLM.format(llm=models["llm"]))
    config["adapter"] = yaml.safe_load(ADAPTERS[capability])
    frame = FRAME.rename(columns={"review": "input", "sentiment": "response"})
    result = one_step(config, frame, tmp_path)
    assert result.plan["total_steps"]["value"] == 1
    assert all(math.isfinite(x) for x in result.statistics["training"]["response"]["loss"])


def test_ludwig_multi_adapter_config_validates_and_trains_one_step(models, tmp_path):
    """The Multi-Adapter page's shape; `chat` is a trained adapter (a config naming two fresh adapters would leave
    the inactive one untrained, and is refused with that reason)."""
    single = yaml.safe_load(LLM.format(llm=models["llm"])) | {"adapter": {"type": "lora", "r": 8}}
    frame = FRAME.rename(columns={"review": "input", "sentiment": "response"})
    chat = one_step(single, frame, tmp_path / "chat").output_directory / "model" / "adapter"
    config = yaml.safe_load(LLM.format(llm=models["llm"]))
    config["adapters"] = yaml.safe_load(f"""
      adapters:
        coding: {{type: lora, r: 16, alpha: 32, target_modules: ["q_proj", "v_proj"]}}
        chat: {{type: lora, r: 8, alpha: 16, pretrained_adapter_weights: {chat}}}
      active: coding""")
    one_step(config, frame, tmp_path / "named")


@pytest.mark.parametrize("capability", ENCODERS)
def test_ludwig_encoder_config_validates_and_trains_one_step(capability, models, tmp_path):
    config = {"model_type": "ecd",
              "input_features": [{"name": "title", "type": "text", "column": "review",
                                  "encoder": yaml.safe_load(ENCODERS[capability] % models)}],
              "output_features": [{"name": "class", "type": "category", "column": "sentiment"}],
              "trainer": {"epochs": 3, "train_steps": 1, "batch_size": 4}}
    result = one_step(config, FRAME, tmp_path)
    assert all(math.isfinite(x) for x in result.statistics["training"]["class"]["loss"])
