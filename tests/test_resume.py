"""Crash safety: a run killed with SIGKILL at a random step resumes to the very weights and metrics of a run that
was never interrupted; checkpoints are atomic and pickle-free."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import tiny
import yaml
from safetensors.torch import load_file

CONFIG = {
    "input_features": [{"name": "review", "type": "text", "encoder": {"type": "auto_transformer", "trainable": True}},
                       {"name": "genre", "type": "category"}],
    "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"}],
    "trainer": {"epochs": 4, "batch_size": 16, "learning_rate": 0.003, "steps_per_checkpoint": 4, "early_stop": -1},
}


def _tunefork(*args, env) -> list[str]:
    return [sys.executable, "-m", "tunefork", "--quiet", *args]


# AdaLoRA keeps importance statistics between steps and re-allocates ranks from them: a checkpoint must carry them.
# Its schedule spans the 44 steps: warm-up 4, re-allocation every 2 steps, the final budget over the last 8.
ADALORA = {"type": "adalora", "init_r": 6, "target_r": 2, "tinit": 4, "tfinal": 8, "delta_t": 2}


# model_type llm: LoRA instruction fine-tuning of the tiny Llama, the same schedule (44 steps, a checkpoint every 4)
LLM = {
    "model_type": "llm", "input_features": [{"name": "review", "type": "text"}],
    "output_features": [{"name": "sentiment", "type": "text"}], "prompt": {"template": "Review: {review}\nSentiment:"},
    "adapter": {"type": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
    "trainer": {"type": "finetune", **CONFIG["trainer"], "learning_rate": 0.01},
}
WEIGHTS = {"full": "model.safetensors", "adalora": "model.safetensors", "llm-lora": "adapter/adapter_model.safetensors"}


@pytest.fixture()
def setup(request, tmp_path, tiny_bert, tiny_llama):
    kind = getattr(request, "param", "full")
    config = json.loads(json.dumps(LLM if kind == "llm-lora" else CONFIG))
    if kind == "llm-lora":
        config["base_model"] = str(tiny_llama)
    else:
        config["input_features"][0]["encoder"]["pretrained_model_name_or_path"] = str(tiny_bert)
    if kind == "adalora":
        config["input_features"][0]["encoder"]["adapter"] = ADALORA
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    tiny.sentiment_frame(240, seed=7).to_csv(tmp_path / "data.csv", index=False)
    env = dict(os.environ, TUNEFORK_CACHE_DIR=str(tmp_path / "cache"))
    base = ["train", "--dataset", str(tmp_path / "data.csv"), "--output_directory", str(tmp_path / "runs")]
    return tmp_path, env, base, WEIGHTS[kind]


@pytest.mark.parametrize("setup", ["full", "adalora", "llm-lora"], indirect=True)
def test_sigkill_at_a_random_step_then_resume_equals_uninterrupted(setup):
    tmp, env, base, weights = setup
    subprocess.run(_tunefork(*base, "-c", str(tmp / "config.yaml"), "--model_name", "whole", env=env), env=env, check=True)

    # kill after a random number of checkpoints (each follows 4 optimizer steps; 44 steps in all)
    kill_after = random.Random().randint(1, 9) * 4
    run = tmp / "runs" / "experiment_killed"
    process = subprocess.Popen(_tunefork(*base, "-c", str(tmp / "config.yaml"), "--model_name", "killed", env=env), env=env)
    pointer = run / "checkpoints" / "pointer.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if pointer.is_file() and int(json.loads(pointer.read_text())["last"].split("-")[1]) >= kill_after:
            break
        time.sleep(0.01)
    assert process.poll() is None, "training finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run / "model").exists()  # nothing for Model.load to half-read
    for leftover in (run / "checkpoints").iterdir():
        assert leftover.name == "pointer.json" or (leftover / "state.json").is_file() or leftover.name.startswith(".")

    subprocess.run(_tunefork(*base, "--model_resume_path", str(run), env=env), env=env, check=True)
    whole, resumed = tmp / "runs" / "experiment_whole", run
    a = load_file(str(whole / "model" / weights))
    b = load_file(str(resumed / "model" / weights))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key
    stats_a = json.loads((whole / "training_statistics.json").read_text())
    stats_b = json.loads((resumed / "training_statistics.json").read_text())
    for split in ("training", "validation", "test"):
        assert stats_a[split] == stats_b[split]
    assert stats_a["best"] == stats_b["best"]
    assert not (resumed / "checkpoints").exists()  # a finished run keeps model/, not its checkpoints


def test_checkpoints_keep_last_and_best_without_pickle(setup, tiny_bert):
    from tunefork import Model
    from tunefork.training import checkpoint

    tmp, env, _, _ = setup
    config = yaml.safe_load((tmp / "config.yaml").read_text())
    model = Model(config, quiet=True)
    writer_dirs = []
    original = checkpoint.Checkpoints.save

    def spy(self, *args, **kwargs):
        path = original(self, *args, **kwargs)
        writer_dirs.append(sorted(p.name for p in self.folder.iterdir()))
        return path

    checkpoint.Checkpoints.save = spy
    try:
        model.train(tiny.sentiment_frame(240, seed=7), output_directory=tmp / "runs2")
    finally:
        checkpoint.Checkpoints.save = original
    assert len(writer_dirs) == 11  # 168 training rows → 11 steps an epoch, 44 in all, a checkpoint every 4
    for names in writer_dirs:
        steps = [n for n in names if n.startswith("step-")]
        assert 1 <= len(steps) <= 2  # the last and the best, nothing else
        assert "pointer.json" in names
    for path in (tmp / "runs2").rglob("*"):
        assert path.suffix not in (".bin", ".pt", ".pkl", ".pth")


def test_resume_refuses_other_data_and_finished_runs(setup):
    tmp, env, base, _ = setup
    from tunefork import Model
    from tunefork.errors import TuneforkError

    config = yaml.safe_load((tmp / "config.yaml").read_text())
    data = tiny.sentiment_frame(240, seed=7)
    result = Model(config, quiet=True).train(data, output_directory=tmp / "runs3")
    with pytest.raises(TuneforkError, match="already finished"):
        Model(config, quiet=True).train(data, model_resume_path=result.output_directory)
    out = subprocess.run(_tunefork("train", "--dataset", str(tmp / "data.csv"), "--model_resume_path", str(tmp / "nowhere"), env=env),
                         env=env, capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.strip().startswith("error:") and "Traceback" not in out.stderr
