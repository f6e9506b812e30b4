"""Ludwig's trainer keys for fine-tuning: configs written as Ludwig's trainer, optimizer, scheduler and combiner pages
write them, each validated and trained for one step on tiny models with a check of what the key did; the pieces
written here (the cosine with restarts, Ghost Batch Normalization, the range test's pick) checked against torch's and
Lightning's definitions; and the refusals, each one sentence saying what to write instead.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tiny
import torch
import yaml

from tunefork import Model
from tunefork.config import ConfigError

TABULAR = """
input_features:
  - name: length
    type: number
  - name: genre
    type: category
output_features:
  - name: sentiment
    type: category
"""


def ludwig(trainer: str, rest: str = TABULAR) -> dict:
    return yaml.safe_load(rest + trainer)


def lrs(result) -> list[float]:
    return [e["learning_rate"] for e in result.statistics["evaluations"]]


def torch_schedule(scheduler_class, steps: int, **kwargs) -> list[float]:
    """The learning rates torch's own scheduler gives after each of `steps` steps (base 1)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = scheduler_class(optimizer, **kwargs)
    out = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        out.append(scheduler.get_last_lr()[0])
    return out


# ------------------------------------------------------------------------------------------ checks per config


def check_compile(result, model, data, config):
    seconds = result.efficiency["seconds"]
    assert 0 < seconds["compile"] <= seconds["train"]


def check_auto(result, model, data, config):
    from tunefork.training.lr_range import steepest

    test = json.loads((result.output_directory / "learning_rate_range_test.json").read_text())
    losses = [p["loss"] for p in test["curve"]]
    assert test["steps"] == len(losses) and 12 <= len(losses) <= 100
    assert test["curve"][0]["learning_rate"] == pytest.approx(1e-8)
    assert test["learning_rate"] == test["curve"][steepest(losses)]["learning_rate"]
    assert result.plan["learning_rate"]["value"] == test["learning_rate"]  # one worker: scaled by 1
    assert "Learning rate: auto" in (result.output_directory / "report.html").read_text()
    # the range test leaves the model as it found it: training with the chosen value by hand gives the same weights
    again = Model({**config, "trainer": {**config["trainer"], "learning_rate": test["learning_rate"]}}, quiet=True)
    again.train(data, skip_save_model=True, random_seed=1)
    for (name, a), (_, b) in zip(model.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def check_max_batch_size(result, model, data, config):
    assert result.plan["batch_size"]["value"] == 16 and "max_batch_size" in result.plan["batch_size"]["reason"]
    assert result.plan["eval_batch_size"]["value"] == 16


def check_eval_steps(result, model, data, config):
    assert result.plan["evaluation_rows"]["value"] == 4  # 1 batch of 4, of the 8 validation rows
    held_out = data[data.split == 1].head(4)
    assert result.statistics["validation"]["combined"]["loss"][0] == pytest.approx(
        model.evaluate(held_out.drop(columns="split"))["combined"]["loss"], rel=1e-5)


def check_cosine_restarts(result, model, data, config):
    expected = torch_schedule(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, 7, T_0=2, T_mult=2, eta_min=0.01)
    assert lrs(result) == pytest.approx(expected, rel=1e-6)


def check_exponential(result, model, data, config):
    assert lrs(result) == pytest.approx([0.5 ** ((s + 1) // 2) for s in range(5)], rel=1e-6)


def check_plateau(result, model, data, config):
    # reduced at each evaluation the training loss did not improve on: a power of 0.5 of the base rate each time
    exponents = [math.log(lr, 0.5) for lr in lrs(result)]
    assert all(abs(e - round(e)) < 1e-9 for e in exponents) and exponents == sorted(exponents)


def check_ghost(result, model, data, config):
    from tunefork.models.layers import GhostBatchNorm

    ghosts = [m for m in model.model.modules() if isinstance(m, GhostBatchNorm)]
    assert [g.virtual_batch_size for g in ghosts] == [4, 4] and ghosts[0].bn.momentum == 0.05


def check_fc_layers(result, model, data, config):
    head = model.model.heads["sentiment"][0]
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(lin.out_features, lin.bias is not None) for lin in linears] == [(8, False), (4, True)]
    assert [type(m).__name__ for m in head] == ["Linear", "Tanh", "Linear", "LayerNorm", "Tanh", "Dropout"]


def check_trains(result, model, data, config):
    assert math.isfinite(result.statistics["training"]["combined"]["loss"][-1])


STEP = "trainer:\n  train_steps: 1\n  batch_size: 8\n"
CONFIGS = {
    "compile": (STEP + "  compile: true\n", check_compile),
    "learning_rate_auto": (STEP + "  learning_rate: auto\n", check_auto),
    "max_batch_size": ("trainer:\n  train_steps: 1\n  batch_size: auto\n  max_batch_size: 16\n", check_max_batch_size),
    "eval_steps": (STEP + "  eval_steps: 1\n  eval_batch_size: 4\n", check_eval_steps),
    "cosine_restarts": (STEP.replace("train_steps: 1", "train_steps: 7") + """  steps_per_checkpoint: 1
  learning_rate: 1.0
  optimizer: {type: sgd}
  learning_rate_scheduler:
    decay: cosine
    t_0: 2
    t_mult: 2
    eta_min: 0.01
""", check_cosine_restarts),
    "exponential_staircase": (STEP.replace("train_steps: 1", "train_steps: 5") + """  steps_per_checkpoint: 1
  learning_rate: 1.0
  learning_rate_scheduler:
    decay: exponential
    decay_rate: 0.5
    decay_steps: 2
    staircase: true
""", check_exponential),
    "reduce_on_plateau": (STEP.replace("train_steps: 1", "train_steps: 6") + """  steps_per_checkpoint: 1
  learning_rate: 1.0
  optimizer: {type: sgd}
  learning_rate_scheduler:
    reduce_on_plateau: 3
    reduce_on_plateau_patience: 1
    reduce_on_plateau_rate: 0.5
    reduce_eval_metric: loss
    reduce_eval_split: training
""", check_plateau),
    **{f"optimizer_{kind}": (STEP + f"  optimizer:\n    type: {kind}\n{keys}", check_trains) for kind, keys in (
        ("sgd", "    momentum: 0.9\n    dampening: 0.1\n    weight_decay: 0.01\n"),
        ("adam", "    betas: [0.9, 0.99]\n    eps: 1.0e-08\n    amsgrad: true\n"),
        ("adamw", "    weight_decay: 0.01\n"),
        ("adadelta", "    rho: 0.95\n    eps: 1.0e-06\n"),
        ("adagrad", "    initial_accumulator_value: 0.1\n    lr_decay: 0.01\n"),
        ("adamax", "    betas: [0.9, 0.999]\n"),
        ("nadam", "    momentum_decay: 0.004\n"),
        ("radam", "    eps: 1.0e-08\n"),
        ("rmsprop", "    momentum: 0.9\n    alpha: 0.9\n    centered: true\n"))},
    "ghost_norm": (STEP + """combiner:
  type: concat
  norm: ghost
  norm_params:
    virtual_batch_size: 4
  fc_layers:
    - output_size: 16
    - output_size: 8
      dropout: 0.1
""", check_ghost),
    "fc_layers": (STEP, check_fc_layers),
}
FC_OUTPUT = TABULAR.replace(
    "  - name: sentiment\n    type: category\n", """  - name: sentiment
    type: category
    decoder:
      fc_layers:
        - output_size: 8
          use_bias: false
          weights_initializer: orthogonal
        - output_size: 4
          norm: layer
          dropout: 0.2
          bias_initializer: zeros
      fc_activation: tanh
""")


@pytest.fixture(scope="module")
def frame():
    data = tiny.sentiment_frame(48, seed=0)
    data["split"] = [0] * 32 + [1] * 8 + [2] * 8
    return data


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ludwig_config_trains_one_step(name, frame, tmp_path):
    trainer, check = CONFIGS[name]
    config = ludwig(trainer, FC_OUTPUT if name == "fc_layers" else TABULAR)
    config["preprocessing"] = {"split": {"type": "fixed"}}
    model = Model(config, quiet=True)
    result = model.train(frame, output_directory=tmp_path, random_seed=1)
    check(result, model, frame, config)


def test_layers_to_freeze_regex_keeps_matching_weights(tiny_bert, frame, tmp_path):
    """Ludwig's example freezes encoder blocks by name: those weights stay the pretrained ones, the rest train."""
    from transformers import AutoModel

    config = ludwig(STEP + "  layers_to_freeze_regex: (encoder\\.layer\\.0\\.|embeddings)\n", f"""
input_features:
  - name: review
    type: text
    encoder: {{type: auto_transformer, pretrained_model_name_or_path: {tiny_bert}, trainable: true}}
    preprocessing: {{max_sequence_length: 16}}
output_features:
  - name: sentiment
    type: category
""")
    model = Model(config, quiet=True)
    model.train(frame.drop(columns="split"), output_directory=tmp_path)
    pretrained = AutoModel.from_pretrained(tiny_bert).state_dict()
    trained = model.model.text_encoders()["review"].transformer.state_dict()
    frozen = [k for k in pretrained if "encoder.layer.0." in k or "embeddings" in k]
    moved = [k for k in pretrained if "encoder.layer.1." in k and k.endswith("weight")]
    assert frozen and moved
    assert all(torch.equal(pretrained[k], trained[k]) for k in frozen)
    assert all(not torch.equal(pretrained[k], trained[k]) for k in moved)


# ------------------------------------------------------------------------------------- against the references


def test_cosine_restarts_are_torchs():
    from tunefork.config.trainer import LearningRateScheduler
    from tunefork.training import optim

    for t_0, t_mult in ((3, 1), (2, 2), (1, 3)):
        section = LearningRateScheduler(decay="cosine", t_0=t_0, t_mult=t_mult, eta_min=0.05)
        factor = optim.schedule(section, 40, 10, base_lr=0.5)
        expected = torch_schedule(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, 30, T_0=t_0, T_mult=t_mult,
                                  eta_min=0.1)  # eta_min 0.05 of a base 0.5 is a tenth of it
        assert [factor(s + 1) for s in range(30)] == pytest.approx(expected, rel=1e-9)


def test_ghost_batch_norm_normalises_each_virtual_batch():
    from tunefork.models.layers import GhostBatchNorm

    torch.manual_seed(0)
    x = torch.randn(11, 3) * 4 + 2
    ghost, reference = GhostBatchNorm(3, virtual_batch_size=4), torch.nn.BatchNorm1d(3, momentum=0.05, eps=1e-3)
    out = ghost.train()(x)
    # slices of 4, 4 and 3 rows (a trailing single row would join the slice before)
    expected = torch.cat([reference.train()(part) for part in x.split(4)])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(ghost.bn.running_mean, reference.running_mean)
    assert torch.allclose(ghost.eval()(x), reference.eval()(x), atol=1e-6)
    assert torch.allclose(GhostBatchNorm(3, virtual_batch_size=5).train()(x[:6]).mean(0), torch.zeros(3), atol=1e-5)


def test_range_test_pick_is_lightnings_suggestion():
    from tunefork.training.lr_range import steepest

    losses = list(np.r_[np.full(12, 2.0), [1.9, 1.5, 0.6, 0.5, 0.45], np.full(3, 3.0)])
    # Lightning: np.gradient(loss[skip_begin:-skip_end]).argmin() + skip_begin
    kept = np.asarray(losses[10:-1])
    assert steepest(losses) == int(np.gradient(kept).argmin()) + 10 == 13
    assert steepest(losses[:11]) is None


def test_optimizer_keys_reach_torch():
    from tunefork.config.optimizers import RMSPropOptimizer, SGDOptimizer
    from tunefork.training import optim

    params = [torch.zeros(2, requires_grad=True)]
    made = optim.optimizer(RMSPropOptimizer(type="rmsprop", momentum=0.5, centered=True, alpha=0.8), params, 0.1)
    assert type(made) is torch.optim.RMSprop
    assert {k: made.defaults[k] for k in ("momentum", "centered", "alpha")} == {"momentum": 0.5, "centered": True, "alpha": 0.8}
    made = optim.optimizer(SGDOptimizer(type="sgd", momentum=0.9, dampening=0.2), params, 0.1)
    assert made.defaults["dampening"] == 0.2


# ---------------------------------------------------------------------------------------------- refusals

REFUSALS = [
    ({"trainer": {"optimizer": {"type": "lamb"}}}, r"trainer\.optimizer: 'lamb': LAMB is not in torch\.optim; write type: adamw"),
    ({"trainer": {"optimizer": "paged_adamw_8bit"}}, r"bitsandbytes.*write type: adamw"),
    ({"trainer": {"optimizer": {"type": "lbfgs"}}}, r"'lbfgs': L-BFGS re-evaluates the loss.*write type: adam"),
    ({"trainer": {"optimizer": {"type": "sgd", "nesterov": True}}}, r"nesterov needs momentum > 0"),
    ({"trainer": {"learning_rate_scheduler": {"t_0": 5}}}, r"t_0: only the cosine decay reads it; add decay: cosine"),
    ({"trainer": {"learning_rate_scheduler": {"decay": "cosine", "t_mult": 2}}}, r"t_mult .*set t_0"),
    ({"trainer": {"learning_rate_scheduler": {"reduce_eval_metric": "accuracy"}}},
     r"reduce_eval_metric: 'accuracy' is not reported for 'combined'"),
    ({"trainer": {"layers_to_freeze_regex": "["}}, r"layers_to_freeze_regex: not a regular expression"),
    ({"trainer": {"layers_to_freeze_regex": "^nothing_is_called_this"}}, r"matches no trainable parameter's name"),
    ({"trainer": {"layers_to_freeze_regex": "."}}, r"matches every trainable parameter, so nothing would train"),
    ({"trainer": {"batch_size": 32, "max_batch_size": 16}}, r"trainer\.max_batch_size \(16\) is below trainer\.batch_size \(32\)"),
    ({"trainer": {"learning_rate": "fast"}}, r"trainer\.learning_rate: should be a valid number or 'auto'"),
    ({"combiner": {"norm_params": {"virtual_batch_size": 8}}}, r"combiner: norm_params without a norm"),
    ({"combiner": {"norm": "ghost", "norm_params": {"virtual_batchsize": 8}}}, r"did you mean 'virtual_batch_size'"),
    ({"combiner": {"fc_layers": [{"norm": "batch", "norm_params": {"virtual_batch_size": 4}}]}},
     r"fc_layers\[0\]\.norm_params\.virtual_batch_size: not a parameter of the batch norm"),
    ({"output_features": [{"name": "sentiment", "type": "category", "decoder": {"fc_bias_initializer": "orthogonal"}}]},
     r"fc_bias_initializer"),
    ({"trainer": {"learning_rate_scheduler": {"reduce_on_plateau": 1, "reduce_eval_split": "test"}},
      "preprocessing": {"split": {"probabilities": [0.8, 0.2, 0.0]}}}, r"reduce_eval_split: this run has no test rows"),
]


@pytest.mark.parametrize(("patch", "message"), REFUSALS, ids=[m[:40] for _, m in REFUSALS])
def test_refusals_say_what_to_write(patch, message, frame, tmp_path):
    config = {**ludwig("trainer:\n  train_steps: 1\n"), **patch}
    config["trainer"] = {"train_steps": 1, **patch.get("trainer", {})}
    with pytest.raises(ConfigError, match=message):
        Model(config, quiet=True).train(frame.drop(columns="split"), output_directory=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize(("trainer", "message"), [({"compile": True}, r"trainer\.compile: the model is compiled in one "
                                                   r"process only"), ({"learning_rate": "auto"}, r"learning_rate: auto runs its range test in one process")])
def test_ray_refuses_what_runs_in_one_process(trainer, message):
    from tunefork import config as config_mod
    from tunefork import hardware
    from tunefork import plan as plan_mod
    from tunefork.backends import cluster

    config = config_mod.load({**ludwig(""), "trainer": trainer, "backend": {"type": "ray"}})
    facts = plan_mod.DataFacts(training_rows=40, text_inputs={})
    workers = cluster.workers(config.backend, offered={"CPU": 4.0})
    with pytest.raises(ConfigError, match=message):
        plan_mod.resolve(config, facts, hardware.detect(), workers)


def test_a_resumed_run_keeps_its_range_test(tmp_path):
    """Resuming reads the learning rate the run's own range test chose, instead of testing again."""
    from tunefork import runner
    from tunefork.rundir import RunDirectory
    from tunefork.training.efficiency import Phases

    recorded = {"learning_rate": 0.0123, "steps": 40, "min_lr": 1e-8, "max_lr": 1.0, "rule": "r", "curve": []}
    (tmp_path / runner.LR_RANGE_TEST).write_text(json.dumps(recorded))
    untouched = object()  # a new test would need a recipe and a model: reading the record must not touch them
    assert runner._range_test(untouched, untouched, untouched, {}, 0, RunDirectory(tmp_path), Phases()) == recorded


def test_older_ludwig_layouts_of_an_outputs_fc_stack():
    """Before 0.5 Ludwig wrote an output's layers on the feature; 0.5-0.7 wrote them unprefixed inside the decoder."""
    from tunefork import config as config_mod

    old = yaml.safe_load(TABULAR.replace("    type: category\n", "    type: category\n    fc_layers: [{output_size: 50}]\n")
                         .replace("  - name: genre\n    type: category\n    fc_layers: [{output_size: 50}]\n",
                                  "  - name: genre\n    type: category\n"))
    assert config_mod.load(old).output("sentiment").decoder.fc_layers[0].output_size == 50
    middle = ludwig("", TABULAR.replace("  - name: sentiment\n    type: category\n", """  - name: sentiment
    type: category
    decoder: {num_fc_layers: 2, output_size: 32, dropout: 0.1, norm: batch}
"""))
    decoder = config_mod.load(middle).output("sentiment").decoder
    assert (decoder.num_fc_layers, decoder.fc_output_size, decoder.fc_dropout, decoder.fc_norm) == (2, 32, 0.1, "batch")


def test_a_diverging_auto_run_is_told_the_rate_its_range_test_chose():
    from tunefork import config as config_mod
    from tunefork.errors import DivergedError
    from tunefork.plan import Decision, Plan
    from tunefork.training.divergence import Watch

    config = config_mod.load({**ludwig(""), "trainer": {"learning_rate": "auto"}})
    watch = Watch(config, Plan({"learning_rate": Decision(0.0316, "auto"), "precision": Decision("fp32", "")}))
    with pytest.raises(DivergedError, match=r"set trainer\.learning_rate below the 0\.0316 its range test chose"):
        watch.loss(3, math.nan, None)
