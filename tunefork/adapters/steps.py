"""What the training loop does for adapters around each step. Only AdaLoRA needs anything today: its orthogonality
penalty in the objective, its rank budget re-allocated from each step's gradients, and its rank pattern kept with the
best weights. For every other model these are no-ops that cost nothing.
"""

from __future__ import annotations


class AdapterSteps:
    def __init__(self, adapted: list):
        # (adapter section, peft model) for each model trained through an adapter (the task says which)
        self.adapted = adapted

    def penalty(self):
        """Extra training-objective terms (a tensor), or None."""
        terms = [t for t in (section.penalty(peft) for section, peft in self.adapted) if t is not None]
        return sum(terms) if terms else None

    def after_optimizer_step(self, step: int) -> None:
        """After `optimizer.step()` and before the gradients are cleared; `step` counts optimizer steps from 1."""
        for section, peft in self.adapted:
            section.after_optimizer_step(peft, step)

    def state(self) -> list:
        return [section.training_state(peft) for section, peft in self.adapted]

    def restore(self, state: list) -> None:
        for (section, peft), value in zip(self.adapted, state, strict=True):
            section.restore_training_state(peft, value)

    def checkpoint_state(self) -> tuple[dict, list]:
        """(tensors keyed `<adapter index>/<name>`, one plain state per adapter) for a checkpoint."""
        tensors, plain = {}, []
        for i, (section, peft) in enumerate(self.adapted):
            values, state = section.checkpoint_state(peft)
            tensors.update({f"{i}/{name}": value for name, value in values.items()})
            plain.append(state)
        return tensors, plain

    def restore_checkpoint(self, tensors: dict, plain: list) -> None:
        for i, ((section, peft), state) in enumerate(zip(self.adapted, plain, strict=True)):
            mine = {name.split("/", 1)[1]: value for name, value in tensors.items() if name.startswith(f"{i}/")}
            section.restore_checkpoint_state(peft, mine, state)

