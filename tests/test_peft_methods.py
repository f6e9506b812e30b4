"""peft's newer methods and LoRA initialisations on a causal LM (`model_type: llm`), next to the ECD table in
test_adapters.py: each trains, its saved folder reloads to the same next-token logits, and it merges into the base
weights with the same logits. The initialisations that rewrite the base weights (pissa, olora, corda) are saved as a
plain LoRA on the untouched base; the ones that read data (eva, corda) run peft's routines on training batches.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import tiny

pytest.importorskip("peft")
import torch  # noqa: E402

from tunefork import Model  # noqa: E402
from tunefork.config import ConfigError  # noqa: E402
from tunefork.errors import TuneforkError  # noqa: E402
from tunefork.models import llm  # noqa: E402

CASES = {
    "oft": {"type": "oft", "oft_block_size": 16},
    "boft": {"type": "boft", "boft_block_size": 4},
    "hra": {"type": "hra", "r": 4},
    "vblora": {"type": "vblora", "num_vectors": 16, "vector_length": 16},  # the tiny Llama's k/v layers are 16 wide
    "fourierft": {"type": "fourierft", "n_frequency": 64, "scaling": 10.0},
    "waveft": {"type": "waveft", "n_frequency": 64},
    "tinylora": {"type": "tinylora", "u": 16},
    "ln_tuning": {"type": "ln_tuning"},
    "lora-pissa": {"type": "lora", "r": 4, "init_lora_weights": "pissa"},
    "lora-olora": {"type": "lora", "r": 4, "init_lora_weights": "olora"},
    "lora-eva": {"type": "lora", "r": 4, "init_lora_weights": "eva", "eva_config": {"rho": 1.5}},
    "lora-corda": {"type": "lora", "r": 4, "init_lora_weights": "corda", "corda_config": {"corda_method": "kpm"}},
    "lora-dora-rslora": {"type": "lora", "r": 4, "use_dora": True, "use_rslora": True},
    "lora-patterns": {"type": "lora", "r": 2, "rank_pattern": {"v_proj": 6}, "alpha_pattern": {"v_proj": 3.0}},
}
FRAME = tiny.sentiment_frame(48, seed=5).rename(columns={"review": "instruction", "sentiment": "output"})


def config(base, adapter) -> dict:
    return {"model_type": "llm", "base_model": str(base), "adapter": adapter,
            "input_features": [{"name": "instruction", "type": "text"}],
            "output_features": [{"name": "output", "type": "text"}],
            "prompt": {"template": "Review: {instruction}\nSentiment:"}, "generation": {"max_new_tokens": 3},
            "trainer": {"type": "finetune", "epochs": 1, "batch_size": 8, "learning_rate": 0.01},
            "preprocessing": {"split": {"probabilities": [0.84, 0.16, 0.0]}}}


def next_token_logits(model) -> torch.Tensor:
    return module_logits(model.model)


def module_logits(module) -> torch.Tensor:
    module = module.eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3], [8, 8, 120, 64, 2, 11]], device=next(module.parameters()).device)
    with torch.no_grad():
        return llm.logits(module, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}).cpu()


@pytest.mark.parametrize("name", CASES)
def test_method_trains_reloads_and_merges_with_identical_logits(name, tiny_llama, tmp_path):
    model = Model(config(tiny_llama, CASES[name]), progress=False, quiet=True)
    result = model.train(FRAME, output_directory=tmp_path)
    losses = result.statistics["training"]["output"]["loss"]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    trained = next_token_logits(model)
    saved = json.loads((result.output_directory / "model" / "adapter" / "adapter_config.json").read_text())
    if name == "lora-patterns":  # per-layer rank and alpha reach peft
        v_proj = next(m for n, m in model.model.named_modules() if n.endswith("v_proj"))
        assert v_proj.r["default"] == 6 and v_proj.lora_alpha["default"] == 3.0
        assert saved["rank_pattern"] == {"v_proj": 6}
    if name in ("lora-pissa", "lora-olora", "lora-corda"):  # converted: a plain LoRA of rank 2r on the untouched base
        assert saved["init_lora_weights"] is True and saved["r"] == 8
    reloads_and_merges(result, trained)


def reloads_and_merges(result, trained: torch.Tensor) -> None:
    """The saved folder loads to the trained next-token logits, and merged it gives them too."""
    loaded = Model.load(result.output_directory)
    torch.testing.assert_close(next_token_logits(loaded), trained, rtol=0, atol=2e-5)
    loaded.fitted.model = llm.merge(loaded.model)
    assert not hasattr(loaded.model, "peft_config")
    torch.testing.assert_close(next_token_logits(loaded), trained, rtol=0, atol=2e-5)


def test_eva_and_corda_change_the_start_from_the_data(tiny_llama, tmp_path):
    """The data-driven starts differ from the default one (peft ran on the batches) and from each other."""
    from tunefork import config as cfg_mod
    from tunefork.adapters import wrapper
    from tunefork.data import prompts

    firsts = {}
    for init in ("default", "eva", "corda"):
        section = cfg_mod.load(config(tiny_llama, {"type": "lora", "r": 4, "init_lora_weights": init}))
        torch.manual_seed(0)
        tokens = torch.randint(3, 200, (8, 12))
        batches = [{"input_ids": tokens, "attention_mask": torch.ones_like(tokens),
                    "labels": torch.where(torch.arange(12) < 6, prompts.IGNORE, tokens)}]
        model = llm.build(section, batches=batches if init != "default" else None)
        firsts[init] = next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()
        assert wrapper.is_peft(model)
    assert not torch.equal(firsts["eva"], firsts["default"])
    assert not torch.equal(firsts["corda"], firsts["default"])


@pytest.mark.parametrize(("adapter", "message"), [
    ({"type": "lora", "eva_config": {"rho": 2}}, "set init_lora_weights: eva or remove eva_config"),
    ({"type": "oft", "r": 4}, "set exactly one of r (4) and oft_block_size (32)"),
    ({"type": "oft", "eps": 0.001}, "set coft: true or remove eps"),
    ({"type": "hra", "r": 3}, "must be even with init_weights true"),
    ({"type": "vblora", "topk": 9, "num_vectors": 4}, "topk (9) exceeds num_vectors (4)"),
])
def test_method_mistakes_are_one_sentence(tiny_llama, adapter, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Model(config(tiny_llama, adapter), progress=False, quiet=True)


def test_data_initialisation_on_an_encoder_says_what_to_write(tiny_bert, tmp_path):
    cfg = {"input_features": [{"name": "review", "type": "text", "encoder": {
        "type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert),
        "adapter": {"type": "lora", "init_lora_weights": "eva"}}}],
        "output_features": [{"name": "sentiment", "type": "category"}], "trainer": {"epochs": 1}}
    with pytest.raises(ConfigError, match="write pissa or olora instead"):
        Model(cfg, progress=False, quiet=True).train(tiny.sentiment_frame(24), output_directory=tmp_path)


# ------------------------------------------------------------------------------------------ loftq

LOFTQ = {"type": "lora", "r": 4, "init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4, "loftq_iter": 2}}
REAL_LOFTQ = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def trains_with_altered_base(tiny_llama, tmp_path) -> dict:
    """loftq trains; base_layers.safetensors beside the adapter holds the targeted layers as LoftQ left them (not the
    base's own weights); the folder reloads, merges and exports merged (`export --merge-adapter`) to the trained logits, and so does a run that trains on from
    it; without that file it is refused."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tunefork import export

    model = Model(config(tiny_llama, LOFTQ), progress=False, quiet=True)
    result = model.train(FRAME, output_directory=tmp_path)
    trained = next_token_logits(model)
    adapter = result.output_directory / "model" / "adapter"
    altered = load_file(adapter / "base_layers.safetensors")
    untouched = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    assert sorted(altered) == sorted(k for k in untouched if k.endswith(("q_proj.weight", "v_proj.weight")))
    assert all(not torch.equal(altered[k], untouched[k]) for k in altered)
    assert json.loads((adapter / "adapter_config.json").read_text())["loftq_config"]["loftq_iter"] == 2
    reloads_and_merges(result, trained)
    exported = AutoModelForCausalLM.from_pretrained(export.export(result.output_directory, "hf", tmp_path / "hf",
                                                                  merge_adapter=True))
    torch.testing.assert_close(module_logits(exported), trained, rtol=0, atol=2e-5)
    again = Model(config(tiny_llama, {"type": "lora", "pretrained_adapter_weights": str(adapter)}), progress=False,
                  quiet=True)  # trains on from the saved adapter: the altered base comes along, and is saved again
    reloads_and_merges(again.train(FRAME, output_directory=tmp_path / "again"), next_token_logits(again))
    (adapter / "base_layers.safetensors").unlink()
    with pytest.raises(TuneforkError, match="initialised with loftq, which altered the base weights, and "
                       "base_layers.safetensors"):
        Model.load(result.output_directory)
    return altered


@pytest.mark.skipif(not REAL_LOFTQ, reason="peft's LoftQ quantizes with bitsandbytes on a CUDA GPU")
def test_loftq_with_peft_quantizer_trains_reloads_and_merges(tiny_llama, tmp_path):
    altered = trains_with_altered_base(tiny_llama, tmp_path)
    for weight in altered.values():  # NF4: each block of 64 holds at most 16 values (codes × the block's scale)
        assert max(len(block.unique()) for block in weight.reshape(-1, 64)) <= 16


def test_loftq_saves_the_altered_base_and_reloads_and_merges(tiny_llama, tmp_path, monkeypatch):
    """The same on a CPU: peft's bitsandbytes quantizer (CUDA only) is replaced by a rounding to a grid of 1/8, with
    peft's own SVD of the residual; everything else (peft's LoraConfig, layers, save and load) is peft's."""
    from peft.tuners.lora import layer
    from peft.utils.loftq_utils import _low_rank_decomposition

    from tunefork.adapters import lora_init

    def rounded(weight, num_bits, reduced_rank, num_iter=1):
        quantized = (weight * 8).round() / 8
        parts = _low_rank_decomposition(weight - quantized, reduced_rank=reduced_rank)
        return quantized, parts["R"], parts["L"]

    monkeypatch.setattr(layer, "loftq_init", rounded)
    monkeypatch.setattr(lora_init, "loftq_problem", lambda model: None)
    trains_with_altered_base(tiny_llama, tmp_path)


@pytest.mark.skipif(REAL_LOFTQ, reason="this machine runs LoftQ")
def test_loftq_without_a_gpu_says_what_to_write(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match=r"adapter.init_lora_weights: loftq quantizes the base with bitsandbytes on "
                       r"a CUDA GPU, and this machine has none; write pissa"):
        Model(config(tiny_llama, LOFTQ), progress=False, quiet=True).train(FRAME, output_directory=tmp_path)


# ------------------------------------------------------------------------------------------ named adapters


def test_named_adapters_train_the_active_one_and_save_and_load_them_all(tiny_llama, tmp_path):
    """Ludwig's multi-adapter form: `chat` is a trained adapter loaded as it is, `coding` trains; both are saved in
    peft's layout (a folder per name) and come back, `coding` active, with the same logits."""
    from safetensors.torch import load_file

    chat_run = Model(config(tiny_llama, {"type": "lora", "r": 4}), progress=False, quiet=True).train(
        FRAME, output_directory=tmp_path / "chat")
    chat_folder = chat_run.output_directory / "model" / "adapter"
    named = config(tiny_llama, None)
    named["adapters"] = {"adapters": {"coding": {"type": "lora", "r": 2},
                                      "chat": {"type": "lora", "pretrained_adapter_weights": str(chat_folder)}},
                         "active": "coding"}
    model = Model(named, progress=False, quiet=True)
    result = model.train(FRAME, output_directory=tmp_path / "named")
    saved = result.output_directory / "model" / "adapter"
    assert (saved / "coding" / "adapter_config.json").is_file() and (saved / "chat" / "adapter_config.json").is_file()
    chat_before, chat_after = load_file(chat_folder / "adapter_model.safetensors"), load_file(
        saved / "chat" / "adapter_model.safetensors")
    assert chat_before.keys() == chat_after.keys()
    assert all(torch.equal(chat_before[k], chat_after[k]) for k in chat_before)  # loaded, never trained
    assert json.loads((saved / "coding" / "adapter_config.json").read_text())["r"] == 2
    assert model.model.active_adapter == "coding"
    loaded = Model.load(result.output_directory)
    assert loaded.model.active_adapter == "coding" and set(loaded.model.peft_config) == {"coding", "chat"}
    torch.testing.assert_close(next_token_logits(loaded), next_token_logits(model), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("adapters", "message"), [
    ({"adapters": {"a": {"type": "lora"}, "b": {"type": "lora"}}, "active": "a"},
     "adapters.b would stay at its initial weights"),
    ({"adapters": {"a": {"type": "lora"}}, "active": "z"}, "active 'z' is not one of the adapters"),
    ({"adapters": {"a": {"type": "lora"}}, "active": "a", "merge": {"name": "m"}}, "remove merge and set active"),
])
def test_named_adapter_mistakes_are_one_sentence(tiny_llama, adapters, message):
    named = config(tiny_llama, None)
    named["adapters"] = adapters
    with pytest.raises(ConfigError, match=message):
        Model(named, progress=False, quiet=True)
