"""`resolve(config, facts, hardware)`: every value the config leaves open, decided once, each with its reason.

The plan is written to `resolved_config.yaml` beside the model, so a run can always be explained.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from tunefork.config.errors import ConfigError
from tunefork.config.schema import Config

log = logging.getLogger("tunefork.plan")

METRICS = {
    "category": ("loss", "accuracy", "macro_f1", "hits_at_k", "roc_auc"),
    "binary": ("loss", "accuracy", "macro_f1", "roc_auc"),
    "number": ("loss", "mean_absolute_error", "mean_squared_error", "root_mean_squared_error", "r2"),
}
LOWER_IS_BETTER = {"loss", "mean_absolute_error", "mean_squared_error", "root_mean_squared_error"}


@dataclass(frozen=True)
class Decision:
    value: object
    reason: str


@dataclass
class Plan:
    decisions: dict[str, Decision] = field(default_factory=dict)

    def decide(self, key: str, value, reason: str) -> None:
        self.decisions[key] = Decision(value, reason)

    def __getitem__(self, key: str):
        return self.decisions[key].value

    def get(self, key: str, default=None):
        return self.decisions[key].value if key in self.decisions else default

    def to_dict(self) -> dict:
        return {k: {"value": d.value, "reason": d.reason} for k, d in self.decisions.items()}


@dataclass(frozen=True)
class DataFacts:
    """What the plan needs to know about the preprocessed data."""

    training_rows: int
    text_inputs: dict[str, dict]  # name → {"decoder_only": bool}
    num_workers: int = 1


def _check_validation_metric(config: Config) -> None:
    field_, metric = config.trainer.validation_field, config.trainer.validation_metric
    allowed = ("loss",) if field_ == "combined" else METRICS[config.output(field_).type]
    if metric not in allowed:
        from tunefork.config.errors import did_you_mean

        raise ConfigError(
            [f"trainer.validation_metric: '{metric}' is not reported for '{field_}' (one of: {', '.join(allowed)})"
             f"{did_you_mean(metric, allowed)}"]
        )


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def resolve(config: Config, facts: DataFacts, hardware) -> Plan:
    _check_validation_metric(config)
    plan = Plan()
    trainer = config.trainer
    plan.decide("device", hardware.device, "CUDA is available" if hardware.device == "cuda" else "no CUDA device")

    # an adapter backpropagates through the whole transformer: it costs memory like fine-tuning does
    trainable_transformer = any(f.type == "text" and not f.encoder.frozen for f in config.input_features)
    if trainer.batch_size == "auto":
        size = 32 if trainable_transformer else 128
        why = "auto: a transformer that trains (fully or through an adapter)" if trainable_transformer else "auto: frozen or no transformer"
        plan.decide("batch_size", size, f"{why} (fixed rule: 32 when fine-tuning a transformer, else 128)")
    else:
        plan.decide("batch_size", trainer.batch_size, "trainer.batch_size")
    eval_size = trainer.eval_batch_size
    if eval_size in (None, "auto"):
        plan.decide("eval_batch_size", max(plan["batch_size"], 64), "no gradients at evaluation: at least 64 rows a batch")
    else:
        plan.decide("eval_batch_size", eval_size, "trainer.eval_batch_size")
    accumulation = 1 if trainer.gradient_accumulation_steps == "auto" else trainer.gradient_accumulation_steps
    plan.decide("gradient_accumulation_steps", accumulation, "trainer.gradient_accumulation_steps" if accumulation != 1 or trainer.gradient_accumulation_steps != "auto" else "auto: 1")

    workers = facts.num_workers
    scale = {"constant": 1.0, "sqrt": math.sqrt(workers), "linear": float(workers)}[trainer.learning_rate_scaling]
    plan.decide("learning_rate", trainer.learning_rate * scale,
                f"trainer.learning_rate × {scale:g} ({trainer.learning_rate_scaling} scaling over {workers} worker(s))")
    schedule(plan, config, facts)

    plan.decide("precision", *_precision(trainer.use_mixed_precision, hardware))

    for f in config.input_features:
        if f.type != "text":
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
        if getattr(f.encoder.adapter, "type", None) == "adalora":
            plan.decide(f"adalora_total_step.{f.name}", *_adalora_steps(f, config.input_features.index(f), plan["total_steps"]))
    return plan


def _adalora_steps(feature, index: int, planned: int) -> tuple[int, str]:
    """The steps AdaLoRA's rank budget schedule spans, checked here so a schedule peft would refuse fails early."""
    from tunefork.adapters.adalora import schedule_problem

    adapter = feature.encoder.adapter
    steps = adapter.schedule_steps(planned)
    problem = schedule_problem(adapter.tinit, adapter.tfinal, steps)
    if problem:
        raise ConfigError([f"input_features[{index}].encoder.adapter: {problem}"])
    return steps, "adapter.total_step" if adapter.total_step else "adapter.total_step unset: the planned optimizer steps"


def _cache_embeddings(feature) -> tuple[bool, str]:
    if not feature.preprocessing.cache_encoder_embeddings:
        return False, "preprocessing.cache_encoder_embeddings is false"
    if feature.encoder.trainable:
        return False, "cache_encoder_embeddings asked, but encoder.trainable is true: the vectors change every step, so no cache"
    if getattr(feature.encoder, "adapter", None) is not None:
        return False, "cache_encoder_embeddings asked, but the encoder has an adapter that trains: no cache"
    return True, "frozen encoder: pooled embeddings computed once, before training"


def schedule(plan: Plan, config: Config, facts: DataFacts) -> None:
    """Effective batch, steps and evaluation cadence from the batch size and accumulation (re-run when they change)."""
    trainer, workers = config.trainer, facts.num_workers
    accumulation = plan["gradient_accumulation_steps"]
    plan.decide("effective_batch_size", plan["batch_size"] * accumulation * workers, "batch_size × gradient_accumulation_steps × workers")
    steps_per_epoch = max(1, math.ceil(facts.training_rows / (plan["batch_size"] * workers) / accumulation))
    total = trainer.train_steps or steps_per_epoch * trainer.epochs
    plan.decide("steps_per_epoch", steps_per_epoch, "ceil(training rows / effective batch)")
    plan.decide("total_steps", total, "trainer.train_steps" if trainer.train_steps else "steps_per_epoch × epochs")
    if trainer.steps_per_checkpoint:
        plan.decide("evaluate_every_steps", trainer.steps_per_checkpoint, "trainer.steps_per_checkpoint")
    elif trainer.checkpoints_per_epoch:
        plan.decide("evaluate_every_steps", max(1, steps_per_epoch // trainer.checkpoints_per_epoch), "trainer.checkpoints_per_epoch")
    else:
        plan.decide("evaluate_every_steps", None, "once per epoch, after its last step")


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


def resolve_inference(config: Config, hardware, batch_size: int | None = None) -> Plan:
    """The part of a plan that prediction needs: device, batch size and precision."""
    plan = Plan()
    plan.decide("device", hardware.device, "CUDA is available" if hardware.device == "cuda" else "no CUDA device")
    size = batch_size or (config.trainer.eval_batch_size if isinstance(config.trainer.eval_batch_size, int) else 64)
    plan.decide("eval_batch_size", size, "--batch_size" if batch_size else "trainer.eval_batch_size or 64")
    plan.decide("precision", *_precision(config.trainer.use_mixed_precision, hardware))
    return plan


# ---------------------------------------------------------------------------------------------- model_type: llm
LLM_METRICS = ("loss", "perplexity")


def resolve_llm(config, training_rows: int, context_length: int | None, hardware) -> Plan:
    """The plan of a causal-LM run: the ECD decisions that apply, plus the sequence limit and the quantization check.

    `context_length`: the model's own limit (max_position_embeddings or n_positions), None when it declares none.
    """
    if config.quantization is not None and hardware.device != "cuda":
        raise ConfigError([f"quantization: {config.quantization.bits}-bit loading uses bitsandbytes, which needs a "
                           f"CUDA GPU, and this machine has none; remove the quantization section to load the model "
                           f"in full precision"])
    plan = Plan()
    trainer = config.trainer
    plan.decide("device", hardware.device, "CUDA is available" if hardware.device == "cuda" else "no CUDA device")
    if trainer.batch_size == "auto":
        # prompt + output rows run to hundreds of tokens and the activations of every layer are kept for backward:
        # a small batch fits anywhere, and gradient_accumulation_steps makes the effective batch larger
        plan.decide("batch_size", 4, "auto: 4 rows a step for causal-LM fine-tuning (fixed rule)")
    else:
        plan.decide("batch_size", trainer.batch_size, "trainer.batch_size")
    if trainer.eval_batch_size in (None, "auto"):
        plan.decide("eval_batch_size", max(plan["batch_size"], 8), "no gradients at evaluation: at least 8 rows a batch")
    else:
        plan.decide("eval_batch_size", trainer.eval_batch_size, "trainer.eval_batch_size")
    accumulation = 1 if trainer.gradient_accumulation_steps == "auto" else trainer.gradient_accumulation_steps
    plan.decide("gradient_accumulation_steps", accumulation, "auto: 1" if trainer.gradient_accumulation_steps == "auto"
                else "trainer.gradient_accumulation_steps")
    plan.decide("learning_rate", trainer.learning_rate, "trainer.learning_rate (one worker: no scaling)")
    schedule(plan, config, DataFacts(training_rows=training_rows, text_inputs={}))  # the ECD rules: same keys
    if trainer.type == "none":
        plan.decide("total_steps", 0, "trainer.type none: nothing trains")
    plan.decide("precision", *_precision(trainer.use_mixed_precision, hardware))
    plan.decide("max_sequence_length", *_sequence_limit(config, context_length))
    if getattr(config.adapter, "type", None) == "adalora" and trainer.type == "finetune":
        from tunefork.adapters.adalora import schedule_problem

        steps = config.adapter.schedule_steps(plan["total_steps"])
        problem = schedule_problem(config.adapter.tinit, config.adapter.tfinal, steps)
        if problem:
            raise ConfigError([f"adapter: {problem}"])
        plan.decide("adalora_total_step", steps, "adapter.total_step" if config.adapter.total_step else "the planned optimizer steps")
    return plan


def _sequence_limit(config, context_length: int | None) -> tuple[int, str]:
    asked = config.preprocessing.global_max_sequence_length
    if asked is not None and context_length is not None and asked > context_length:
        return context_length, f"preprocessing.global_max_sequence_length {asked} is beyond the model's context ({context_length})"
    if asked is not None:
        return asked, "preprocessing.global_max_sequence_length"
    if context_length is not None:
        return context_length, "the model's context length"
    return 2048, "neither global_max_sequence_length nor a context length in the model config: 2048"


def resolve_llm_inference(config, context_length: int | None, hardware, batch_size: int | None = None) -> Plan:
    """What generation needs: device, batch size, precision and the sequence limit."""
    if config.quantization is not None and hardware.device != "cuda":
        resolve_llm(config, 1, context_length, hardware)  # raises the one quantization error
    plan = Plan()
    plan.decide("device", hardware.device, "CUDA is available" if hardware.device == "cuda" else "no CUDA device")
    size = batch_size or (config.trainer.eval_batch_size if isinstance(config.trainer.eval_batch_size, int) else 8)
    plan.decide("eval_batch_size", size, "--batch_size" if batch_size else "trainer.eval_batch_size or 8")
    plan.decide("precision", *_precision(config.trainer.use_mixed_precision, hardware))
    plan.decide("max_sequence_length", *_sequence_limit(config, context_length))
    return plan
