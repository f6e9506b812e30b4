"""`History`: what a run recorded at each evaluation — the metrics per split, output and metric, the best
evaluation, and the examples, tokens and seconds spent — as `training_statistics.json` and in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SPLITS = ("training", "validation", "test")


@dataclass
class History:
    evaluate_training_set: bool
    evaluations: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=lambda: {s: {} for s in SPLITS})
    best: dict | None = None
    train_examples: int = 0
    train_tokens: int = 0
    train_positions: int = 0  # token positions computed, padding included (a task that counts them)
    train_seconds: float = 0.0
    evaluate_seconds: float = 0.0
    compile_seconds: float | None = None  # trainer.compile: the first compiled step, compilation included

    def record(self, split: str, scores: dict) -> None:
        for output, values in scores.items():
            for name, value in values.items():
                if name != "confusion_matrix":
                    self.metrics[split].setdefault(output, {}).setdefault(name, []).append(value)

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> History:
        return cls(**state)

    def to_json(self) -> dict:
        source = ("a full evaluation pass over the training set after each evaluation" if self.evaluate_training_set
                  else "running aggregate of the training batches since the previous evaluation (approximate)")
        return {"training_metrics": source, "evaluations": self.evaluations, **self.metrics, "best": self.best}
