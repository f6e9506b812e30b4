"""Ludwig's newer LLM keys mapped onto what tunefork runs: `strategy: deepspeed` as the FSDP2 sharding of the same
memory class (printed in the plan), `encoder: {type: llm}` as the auto_transformer encoder on a causal LM, the
`mamba` / `mamba2` encoders through Hugging Face's Mamba models, and named multiple adapters."""

from __future__ import annotations

import pytest
import tiny

from tunefork import config as config_mod
from tunefork import hardware, plan
from tunefork.backends import cluster
from tunefork.config import ConfigError

GPU_MACHINE = hardware.Hardware(device="cuda", cpu_bf16=False, cuda_bf16=True, ram_bytes=2**36, cpus=16)


def ecd(encoder: dict, **sections) -> dict:
    return {"input_features": [{"name": "review", "type": "text", "encoder": encoder}],
            "output_features": [{"name": "sentiment", "type": "category"}], **sections}


def ray_plan(tiny_bert, strategy, use_gpu=True):
    backend = {"type": "ray", "trainer": {"strategy": strategy, "num_workers": 2, "use_gpu": use_gpu}}
    cfg = config_mod.load(ecd({"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)},
                              backend=backend))
    offered = {"CPU": 16.0, "GPU": 2.0} if use_gpu else {"CPU": 16.0}
    workers = cluster.workers(cfg.backend, offered=offered)
    facts = plan.DataFacts(training_rows=64, text_inputs={"review": {"decoder_only": False}})
    return cfg, plan.resolve(cfg, facts, GPU_MACHINE if use_gpu else hardware.detect(), workers)


@pytest.mark.parametrize(("zero", "shown", "reason"), [
    ({"stage": 3}, "fsdp (reshard_after_forward: True)", "DeepSpeed ZeRO-3 runs as FSDP2 (full shard)"),
    ({"stage": 2}, "fsdp (reshard_after_forward: False)", "DeepSpeed ZeRO-2 runs as FSDP2 (gradients and optimizer"),
    ({"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True}, "offload_param": {"device": "cpu"}},
     "fsdp (reshard_after_forward: True, offload: cpu (pinned))", "DeepSpeed ZeRO-3 with CPU offload runs as FSDP2"),
    ({"stage": 0}, "ddp", "DeepSpeed ZeRO-0 (no sharding) runs as DDP"),
])
def test_deepspeed_runs_as_the_fsdp2_sharding_of_its_memory_class(tiny_bert, zero, shown, reason):
    cfg, decided = ray_plan(tiny_bert, {"type": "deepspeed", "zero_optimization": zero})
    assert decided["strategy"] == shown
    assert decided.decisions["strategy"].reason.startswith(reason)
    effective = cfg.backend.trainer.effective_strategy
    assert effective.type == shown.split()[0]
    if effective.type == "fsdp":
        assert effective.reshard_after_forward == (zero["stage"] == 3)
        assert effective.offload == ("offload_param" in zero)
        assert effective.pin_memory == ("offload_param" in zero)


@pytest.mark.parametrize(("strategy", "message"), [
    ({"type": "deepspeed", "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}},
     "offloads to CPU memory only; write device: cpu"),
    ({"type": "deepspeed", "zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}},
     "set stage 2 or 3, or remove the offload"),
    ({"type": "deepspeed", "zero_optimization": {"stage": 3}, "fp16": {"enabled": True}},
     "fp16: mixed precision is trainer.use_mixed_precision: true here"),
])
def test_deepspeed_mistakes_are_one_sentence(tiny_bert, strategy, message):
    with pytest.raises(ConfigError, match=message):
        ray_plan(tiny_bert, strategy)


def test_cpu_offload_on_cpu_workers_is_refused(tiny_bert):
    zero = {"stage": 3, "offload_param": {"device": "cpu"}}
    with pytest.raises(ConfigError, match="remove the offload, or train on GPU workers"):
        ray_plan(tiny_bert, {"type": "deepspeed", "zero_optimization": zero}, use_gpu=False)


def test_fsdp_offload_reaches_fully_shard(monkeypatch):
    """The translated section's offload becomes FSDP2's CPUOffloadPolicy on every block and the root."""
    import torch
    from torch.distributed import fsdp

    from tunefork.backends import distributed
    from tunefork.config.backend import FSDPStrategy

    seen = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, **kw: seen.append(kw["offload_policy"]) or module)
    monkeypatch.setattr("torch.distributed.device_mesh.init_device_mesh", lambda *a, **k: None)
    dist = distributed.Distributed(0, 2, FSDPStrategy(offload=True, pin_memory=True), torch.device("cpu"), "fp32")
    blocks = [torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]
    dist._fully_shard(torch.nn.Sequential(*blocks), blocks)
    assert len(seen) == 3 and all(isinstance(p, fsdp.CPUOffloadPolicy) and p.pin_memory for p in seen)


# ------------------------------------------------------------------------------------- encoder: {type: llm}


def test_llm_encoder_is_the_auto_transformer_on_the_causal_lm(tiny_llama, tmp_path):
    """Ludwig's QLoRA classification page, with the tiny Llama and without the quantization (no CUDA here)."""
    from tunefork import Model

    written = ecd({"type": "llm", "base_model": str(tiny_llama), "adapter": {"type": "lora", "r": 4}},
                  trainer={"epochs": 1, "batch_size": 8, "learning_rate": 0.01})
    cfg = config_mod.load(written)
    encoder = cfg.input_features[0].encoder
    assert encoder.type == "auto_transformer" and encoder.pretrained_model_name_or_path == str(tiny_llama)
    assert encoder.adapter.type == "lora" and encoder.adapter.r == 4
    model = Model(written, progress=False, quiet=True)
    frame = tiny.sentiment_frame(32, seed=2)
    result = model.train(frame, output_directory=tmp_path)
    assert result.plan["pooling.review"]["value"] == "last"  # a causal LM: its last real token
    loaded = Model.load(result.output_directory)
    assert loaded.predict(frame.head(8)).equals(model.predict(frame.head(8)))


def test_llm_encoder_quantization_without_cuda_is_one_line(tiny_llama, tmp_path):
    from tunefork import Model

    written = ecd({"type": "llm", "base_model": str(tiny_llama), "adapter": "lora", "quantization": {"bits": 4}})
    with pytest.raises(ConfigError, match=r"input_features\[0\]\.encoder\.quantization: 4-bit loading uses "
                                          r"bitsandbytes, which needs a CUDA GPU"):
        Model(written, progress=False, quiet=True).train(tiny.sentiment_frame(24), output_directory=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_quantized_encoder_without_adapter_cannot_train(tiny_llama):
    with pytest.raises(ConfigError, match="add an adapter \\(QLoRA\\), or set trainable: false"):
        config_mod.load(ecd({"type": "llm", "base_model": str(tiny_llama), "trainable": True,
                             "quantization": {"bits": 4}}))


# ------------------------------------------------------------------------------------------- mamba encoders


@pytest.mark.parametrize("version", [1, 2])
def test_mamba_encoders_train_and_reload(version, tmp_path):
    from tunefork import Model

    folder = tiny.build_mamba(tmp_path / "base", version)
    kind = "mamba" if version == 1 else "mamba2"
    written = ecd({"type": kind, "pretrained_model_name_or_path": str(folder), "trainable": True},
                  trainer={"epochs": 2, "batch_size": 8, "learning_rate": 0.005})
    model = Model(written, progress=False, quiet=True)
    frame = tiny.sentiment_frame(48, seed=4)
    result = model.train(frame, output_directory=tmp_path / "run")
    losses = result.statistics["training"]["sentiment"]["loss"]
    assert losses[-1] < losses[0]
    encoder = model.model.text_encoders()["review"].transformer
    assert type(encoder).__name__ == ("MambaModel" if version == 1 else "Mamba2Model")
    loaded = Model.load(result.output_directory)
    assert loaded.predict(frame.head(8)).equals(model.predict(frame.head(8)))


def test_ludwigs_older_deepspeed_backend_is_the_ray_strategy(tiny_bert):
    cfg = config_mod.load(ecd({"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)},
                              backend={"type": "deepspeed", "zero_optimization": {"stage": 2}}))
    assert cfg.backend.type == "ray" and cfg.backend.trainer.strategy.type == "deepspeed"
    assert cfg.backend.trainer.effective_strategy.reshard_after_forward is False
