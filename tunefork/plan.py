"""`resolve(config, facts, hardware, workers, measured)`: every value the config leaves open, decided once, each with
its reason — for both model types.

`resolve` is pure: it takes every fact it needs (the data's, the hardware's, the Ray workers', and a batch size that
`batch_size: auto` measured) and returns a frozen `Plan`. Nothing writes into a plan afterwards; a measured batch
size makes a new plan by calling `resolve` again with the measurement. The plan is written to `resolved_config.yaml`
beside the model, so a run can always be explained.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tunefork.config.features import is_transformer
from tunefork.errors import ConfigError, did_you_mean

log = logging.getLogger("tunefork.plan")

METRICS = {
    "category": ("loss", "accuracy", "macro_f1", "hits_at_k", "roc_auc"),
    "binary": ("loss", "accuracy", "macro_f1", "roc_auc"),
    "number": ("loss", "mean_absolute_error", "mean_squared_error", "root_mean_squared_error", "r2"),
    "set": ("loss", "jaccard", "micro_f1", "macro_f1", "micro_precision", "macro_precision", "micro_recall",
            "macro_recall"),
}
LOWER_IS_BETTER = {"loss", "perplexity", "mean_absolute_error", "mean_squared_error", "root_mean_squared_error"}


@dataclass(frozen=True)
class Decision:
    value: object
    reason: str


@dataclass(frozen=True)
class Plan:
    """The decisions of one run, read-only: `plan["batch_size"]`, `plan.decisions["batch_size"].reason`."""

    decisions: Mapping[str, Decision]

    def __getitem__(self, key: str):
        return self.decisions[key].value

    def __contains__(self, key: str) -> bool:
        return key in self.decisions

    def get(self, key: str, default=None):
        return self.decisions[key].value if key in self.decisions else default

    def to_dict(self) -> dict:
        return {k: {"value": d.value, "reason": d.reason} for k, d in self.decisions.items()}


class _Draft(dict):
    """The decisions while `resolve` makes them; frozen into a `Plan` before anyone else sees them."""

    def decide(self, key: str, value, reason: str) -> None:
        self[key] = Decision(value, reason)

    def __getitem__(self, key: str):
        return dict.__getitem__(self, key).value

    def frozen(self) -> Plan:
        return Plan(MappingProxyType(dict(self.items())))


@dataclass(frozen=True)
class DataFacts:
    """What the plan needs to know about the preprocessed data."""

    training_rows: int
    text_inputs: dict[str, dict]  # ECD: name → {"decoder_only": bool}
    context_length: int | None = None  # model_type llm: the base model's own limit, None when it declares none


@dataclass(frozen=True)
class Measured:
    """What `batch_size: auto` measured on the built model: the fastest micro-batch within memory, and the estimate."""

    batch_size: int | None
    rates: dict  # micro-batch → examples/s
    memory_estimate: dict | None  # Estimate.to_dict() of the final batch size


@dataclass(frozen=True)
class LocalWorkers:
    """The local backend's one worker; a Ray run passes `backends.cluster.Workers` (same fields)."""

    count: int = 1
    use_gpu: bool = False
    resources: dict | None = None
    reasons: dict | None = None


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def reported_metrics(config, field: str) -> tuple[str, ...]:
    """The metrics an evaluation reports for `field` (an output feature's name, or 'combined')."""
    if field == "combined":
        return ("loss",)
    return config.trainer.reported_metrics if config.model_type == "llm" else METRICS[config.output(field).type]


def check_validation_metric(config) -> None:
    trainer = config.trainer
    allowed = reported_metrics(config, trainer.validation_field)
    for key, metric in (("validation_metric", trainer.validation_metric),
                        ("learning_rate_scheduler.reduce_eval_metric", trainer.learning_rate_scheduler.reduce_eval_metric)):
        if metric not in allowed:
            raise ConfigError([f"trainer.{key}: '{metric}' is not reported for '{trainer.validation_field}' (one of: "
                               f"{', '.join(allowed)}){did_you_mean(metric, allowed)}"])


def resolve(config, facts: DataFacts, hardware, workers=LocalWorkers(), measured: Measured | None = None,
            range_test: dict | None = None) -> Plan:
    """`range_test`: what `learning_rate: auto`'s range test found (`training.lr_range`), once it has run."""
    check_validation_metric(config)
    _check_quantization(config, hardware)
    plan = _Draft()
    trainer, llm = config.trainer, config.model_type == "llm"
    plan.decide("device", hardware.device, "CUDA is available" if hardware.device == "cuda" else "no CUDA device")
    _batches(plan, config, measured)
    _learning_rate(plan, trainer, workers, range_test)
    schedule(plan, config, facts, workers.count)
    higher = "higher" if higher_is_better(trainer.validation_metric) else "lower"
    plan.decide("best_model", f"{trainer.validation_field} {trainer.validation_metric}",
                f"trainer.validation_field and validation_metric: {higher} is better, NaN never counts")
    plan.decide("precision", *_precision(trainer.use_mixed_precision, hardware))
    plan.decide("gradient_checkpointing", trainer.enable_gradient_checkpointing,
                "trainer.enable_gradient_checkpointing: each layer's activations recomputed in backward"
                if trainer.enable_gradient_checkpointing else "trainer.enable_gradient_checkpointing is false")
    if config.backend.type == "ray":
        _backend(plan, config, workers)
    if llm:
        _llm(plan, config, facts, hardware)
    else:
        _text_inputs(plan, config, facts)
    if measured is not None and measured.memory_estimate is not None:
        plan.decide("memory_estimate_mb", measured.memory_estimate,
                    "what the process holds + gradients + optimizer state + activations")
    return plan.frozen()


def _learning_rate(plan: _Draft, trainer, workers, range_test: dict | None) -> None:
    scale = {"constant": 1.0, "sqrt": math.sqrt(workers.count), "linear": float(workers.count)}[trainer.learning_rate_scaling]
    scaling = f"{scale:g} ({trainer.learning_rate_scaling} scaling over {workers.count} worker(s))"
    if trainer.learning_rate != "auto":
        plan.decide("learning_rate", trainer.learning_rate * scale, f"trainer.learning_rate × {scaling}")
    elif range_test is None:
        plan.decide("learning_rate", None, "auto: a learning-rate range test before training picks it")
    else:
        plan.decide("learning_rate", range_test["learning_rate"] * scale,
                    f"auto: the range test's steepest loss descent ({range_test['steps']} steps from "
                    f"{range_test['min_lr']:g} to {range_test['max_lr']:g}) × {scaling}")


def _batches(plan: _Draft, config, measured: Measured | None) -> None:
    trainer, llm = config.trainer, config.model_type == "llm"
    if trainer.batch_size != "auto":
        target, why = trainer.batch_size, "trainer.batch_size"
    elif llm:
        # prompt + output rows run to hundreds of tokens and every layer's activations are kept for backward: a small
        # batch fits anywhere, and gradient_accumulation_steps makes the effective batch larger
        target, why = 4, "auto: 4 rows a step for causal-LM fine-tuning (fixed rule)"
    elif any(is_transformer(f) and not f.encoder.frozen for f in config.input_features):
        # an adapter backpropagates through the whole transformer: it costs memory like fine-tuning does
        target, why = 32, "auto: a transformer that trains, fully or through an adapter (fixed rule: 32, else 128)"
    else:
        target, why = 128, "auto: frozen or no transformer (fixed rule: 32 when a transformer trains, else 128)"
    cap = trainer.max_batch_size
    if trainer.batch_size == "auto" and target > cap:
        target, why = cap, f"auto, capped by trainer.max_batch_size ({why.removeprefix('auto: ')})"
    elif trainer.batch_size != "auto" and target > cap:
        raise ConfigError([f"trainer.max_batch_size ({cap}) is below trainer.batch_size ({target}); raise it, or "
                           f"write batch_size: auto to let it cap the batch"])
    accumulation = 1 if trainer.gradient_accumulation_steps == "auto" else trainer.gradient_accumulation_steps
    acc_why = "auto: 1" if trainer.gradient_accumulation_steps == "auto" else "trainer.gradient_accumulation_steps"
    if measured is not None and measured.batch_size and measured.batch_size != target:
        rates = ", ".join(f"{b}: {r:.0f}" for b, r in measured.rates.items())
        plan.decide("batch_size", measured.batch_size,
                    f"auto: fastest measured micro-batch (examples/s {rates}) within memory")
        acc_why = f"keeps the effective batch at {target * accumulation}"
        accumulation = accumulation * target // measured.batch_size
    else:
        plan.decide("batch_size", target, why)
    plan.decide("gradient_accumulation_steps", accumulation, acc_why)
    eval_size, floor = trainer.eval_batch_size, (8 if llm else 64)
    if eval_size not in (None, "auto"):
        plan.decide("eval_batch_size", eval_size, "trainer.eval_batch_size")
    elif max(plan["batch_size"], floor) > trainer.max_batch_size:
        plan.decide("eval_batch_size", trainer.max_batch_size, "capped by trainer.max_batch_size")
    else:
        plan.decide("eval_batch_size", max(plan["batch_size"], floor), f"no gradients at evaluation: at least {floor} rows a batch")
    plan.decide("evaluation_rows", trainer.eval_steps and trainer.eval_steps * plan["eval_batch_size"],
                "trainer.eval_steps × eval_batch_size: the first rows of each split at evaluations during training (the "
                "final evaluation scores every row)" if trainer.eval_steps else "every row (trainer.eval_steps is null)")


def schedule(plan: _Draft, config, facts: DataFacts, workers: int = 1) -> None:
    """Effective batch, steps and evaluation cadence from the batch size and accumulation."""
    trainer = config.trainer
    accumulation = plan["gradient_accumulation_steps"]
    plan.decide("effective_batch_size", plan["batch_size"] * accumulation * workers, "batch_size × gradient_accumulation_steps × workers")
    steps_per_epoch = max(1, math.ceil(facts.training_rows / (plan["batch_size"] * workers) / accumulation))
    total = trainer.train_steps or steps_per_epoch * trainer.epochs
    plan.decide("steps_per_epoch", steps_per_epoch, "ceil(training rows / effective batch)")
    plan.decide("total_steps", total, "trainer.train_steps" if trainer.train_steps else "steps_per_epoch × epochs")
    if getattr(trainer, "type", None) == "none":
        plan.decide("total_steps", 0, "trainer.type none: nothing trains")
    if trainer.steps_per_checkpoint:
        plan.decide("evaluate_every_steps", trainer.steps_per_checkpoint, "trainer.steps_per_checkpoint")
    elif trainer.checkpoints_per_epoch:
        plan.decide("evaluate_every_steps", max(1, steps_per_epoch // trainer.checkpoints_per_epoch), "trainer.checkpoints_per_epoch")
    else:
        plan.decide("evaluate_every_steps", None, "once per epoch, after its last step")


def _backend(plan: _Draft, config, workers) -> None:
    """The Ray decisions, with their reasons (the workers were read off the cluster by `backends.cluster`)."""
    ray = config.backend
    strategy = ray.trainer.effective_strategy
    plan.decide("backend", "ray", "backend.type")
    plan.decide("cluster", ray.ray.address or "RAY_ADDRESS, else a local cluster started for the run",
                "backend.ray.address")
    shown = strategy.type + (f" (reshard_after_forward: {strategy.reshard_after_forward}"
                             f"{', offload: cpu' if strategy.offload else ''}{' (pinned)' if strategy.pin_memory else ''})"
                             if strategy.type == "fsdp" else "")
    written = ray.trainer.strategy
    reason = written.translated()[1] if written.type == "deepspeed" else "backend.trainer.strategy"
    plan.decide("strategy", shown, reason)
    if strategy.type == "fsdp" and strategy.offload and not workers.use_gpu:
        raise ConfigError(["backend.trainer.strategy: CPU offload moves weights off the GPU, and these workers have "
                           "none (use_gpu false); remove the offload, or train on GPU workers"])
    plan.decide("num_workers", workers.count, workers.reasons["num_workers"])
    plan.decide("use_gpu", workers.use_gpu, workers.reasons["use_gpu"])
    plan.decide("resources_per_worker", workers.resources, workers.reasons["resources_per_worker"])
    plan.decide("max_failures", ray.trainer.max_failures, "backend.trainer.max_failures: restarts from the last checkpoint")
    plan.decide("checkpoint_storage", ray.ray.storage_path or "the run directory", "backend.ray.storage_path")
    trainer = config.trainer
    if trainer.compile or trainer.learning_rate == "auto":  # both run in the one process that builds the model
        raise ConfigError(["trainer.compile: the model is compiled in one process only (Ray's workers wrap it in DDP "
                           "or FSDP first); remove it, or use backend local" if trainer.compile else
                           "trainer.learning_rate: auto runs its range test in one process; set a number (a local "
                           "run with auto finds one)"])
    if strategy.type != "fsdp":
        return
    if trainer.regularization_type and trainer.regularization_lambda:
        raise ConfigError(["trainer.regularization_type with backend.trainer.strategy fsdp: the penalty would be taken "
                           "over weight shards; use strategy ddp"])
    for _, name, adapter in _adapters(config):
        if adapter.type == "adalora":
            raise ConfigError([f"{name}: AdaLoRA reallocates ranks from whole gradients, which FSDP shards; use "
                               f"backend.trainer.strategy ddp"])


def _adapters(config) -> list[tuple[str, str, object]]:
    """(plan key, YAML path, adapter section) of every adapter the config trains."""
    if config.model_type == "llm":
        return [("adalora_total_step", "adapter", config.adapter)] if config.adapter is not None else []
    return [(f"adalora_total_step.{f.name}", f"input_features[{i}].encoder.adapter", f.encoder.adapter)
            for i, f in enumerate(config.input_features) if is_transformer(f) and f.encoder.adapter is not None]


def _adalora(plan: _Draft, config) -> None:
    """The steps AdaLoRA's rank budget schedule spans, checked here so a schedule peft would refuse fails early."""
    from tunefork.adapters.adalora import schedule_problem

    for key, where, adapter in _adapters(config):
        if adapter.type != "adalora":
            continue
        steps = adapter.schedule_steps(plan["total_steps"])
        problem = schedule_problem(adapter.tinit, adapter.tfinal, steps)
        if problem:
            raise ConfigError([f"{where}: {problem}"])
        plan.decide(key, steps,
                    "adapter.total_step" if adapter.total_step else "adapter.total_step unset: the planned optimizer steps")


def _text_inputs(plan: _Draft, config, facts: DataFacts) -> None:
    for f in config.input_features:
        if not is_transformer(f):
            continue
        decoder = facts.text_inputs[f.name]["decoder_only"]
        pooling = f.encoder.reduce_output
        if pooling == "auto":
            pooling = "last" if decoder else "mean"
            why = "auto: last real token of a decoder-only model" if decoder else "auto: mean over real tokens (padding excluded)"
        else:
            why = "encoder.reduce_output"
        plan.decide(f"pooling.{f.name}", pooling, why)
        plan.decide(f"cache_embeddings.{f.name}", *_cache_embeddings(f))
    _adalora(plan, config)


def _cache_embeddings(feature) -> tuple[bool, str]:
    if not feature.preprocessing.cache_encoder_embeddings:
        return False, "preprocessing.cache_encoder_embeddings is false"
    if feature.encoder.trainable:
        return False, "cache_encoder_embeddings asked, but encoder.trainable is true: the vectors change every step, so no cache"
    if getattr(feature.encoder, "adapter", None) is not None:
        return False, "cache_encoder_embeddings asked, but the encoder has an adapter that trains: no cache"
    return True, "frozen encoder: pooled embeddings computed once, before training"


def _llm(plan: _Draft, config, facts: DataFacts, hardware) -> None:
    plan.decide("max_sequence_length", *sequence_limit(config, facts.context_length))
    _generation(plan, config)
    if config.trainer.type != "none":  # finetune, or preference tuning
        _adalora(plan, config)
    if config.trainer.type in ("dpo", "kto"):
        plan.decide("reference_model", *config.trainer.reference_model(config.adapter))


def _check_quantization(config, hardware) -> None:
    if config.model_type == "llm":
        quantized = [("quantization", config.quantization)] if config.quantization is not None else []
    else:  # Ludwig's `encoder: {type: llm, quantization: ...}`
        quantized = [(f"input_features[{i}].encoder.quantization", f.encoder.quantization)
                     for i, f in enumerate(config.input_features) if getattr(f.encoder, "quantization", None)]
    for where, section in quantized:
        if hardware.device != "cuda":
            raise ConfigError([f"{where}: {section.bits}-bit loading uses bitsandbytes, which needs a CUDA GPU, and "
                               f"this machine has none; remove the quantization section to load the model in full "
                               f"precision"])


def sequence_limit(config, context_length: int | None) -> tuple[int, str]:
    """Most tokens of prompt + output in a causal-LM row: the config's limit within the model's context."""
    asked = config.preprocessing.global_max_sequence_length
    if asked is not None and context_length is not None and asked > context_length:
        return context_length, f"preprocessing.global_max_sequence_length {asked} is beyond the model's context ({context_length})"
    if asked is not None:
        return asked, "preprocessing.global_max_sequence_length"
    if context_length is not None:
        return context_length, "the model's context length"
    return 2048, "neither global_max_sequence_length nor a context length in the model config: 2048"


def generation_limit(config, total: int) -> tuple[int, str]:
    """`generation.max_new_tokens`, capped so that a prompt keeps `MIN_PROMPT_TOKENS` of the sequence limit `total`.

    Uncapped, a max_new_tokens near the limit leaves the prompt its last token or two (the model answers without its
    input), and one past it generates past the positions the model has. Capping (rather than refusing) keeps a config
    that asks for "as much as fits" working, and the reason says by how much. A limit of 32 tokens or fewer cannot
    leave a prompt 32 tokens; generation then keeps at least one prompt token, and a prompt that does not fit whole in
    what is left is refused for its row at generation (`recipes.llm.Fitted.generate`)."""
    from tunefork.config.llm import MIN_PROMPT_TOKENS

    asked = config.generation.max_new_tokens
    floor = MIN_PROMPT_TOKENS if total > MIN_PROMPT_TOKENS else 1
    most = total - floor
    if most < 1:
        raise ConfigError([f"preprocessing.global_max_sequence_length: a sequence limit of {total} token leaves no "
                           f"room for a prompt and a generated token"])
    if asked <= most:
        return asked, "generation.max_new_tokens"
    return most, (f"generation.max_new_tokens {asked} would leave the prompt {max(0, total - asked)} of the {total}-token "
                  f"sequence limit: capped to {most}, so that a prompt keeps at least {floor} token{'s' if floor > 1 else ''}")


def _generation(plan: _Draft, config) -> None:
    total = plan["max_sequence_length"]
    plan.decide("max_new_tokens", *generation_limit(config, total))
    room = total - plan["max_new_tokens"]
    plan.decide("prompt_tokens_at_generation", room,
                "max_sequence_length less max_new_tokens: a longer prompt loses its start, and is counted")


def _precision(asked: bool, hardware) -> tuple[str, str]:
    if not asked:
        return "fp32", "trainer.use_mixed_precision is false"
    if hardware.device == "cuda":
        if hardware.cuda_bf16:
            return "bf16", "mixed precision on a GPU with bf16"
        return "fp16", "mixed precision on a GPU without bf16 (fp16 with a gradient scaler)"
    if hardware.cpu_bf16:
        return "bf16", "mixed precision on a CPU with native bf16 (AVX512-BF16 / AMX)"
    return "fp32", "mixed precision asked, but this CPU has no native bf16 (emulated bf16 is 5–11× slower): kept fp32"


def resolve_inference(config, hardware, *, context_length: int | None = None, batch_size: int | None = None) -> Plan:
    """The part of a plan that prediction needs: device, batch size, precision (and a causal LM's sequence limit)."""
    plan = _Draft()
    llm = config.model_type == "llm"
    _check_quantization(config, hardware)
    plan.decide("device", hardware.device, "CUDA is available" if hardware.device == "cuda" else "no CUDA device")
    default = 8 if llm else 64
    size = batch_size or (config.trainer.eval_batch_size if isinstance(config.trainer.eval_batch_size, int) else default)
    plan.decide("eval_batch_size", size, "--batch_size" if batch_size else f"trainer.eval_batch_size or {default}")
    plan.decide("precision", *_precision(config.trainer.use_mixed_precision, hardware))
    if llm:
        plan.decide("max_sequence_length", *sequence_limit(config, context_length))
        _generation(plan, config)
    return plan.frozen()
