"""Sequence → vector reductions that never count padding (Ludwig's `sum` default pools padding tokens too)."""

from __future__ import annotations

import torch

REDUCTIONS = ("cls_pooled", "mean", "sum", "max", "last")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last real token; correct for right *and* left padding."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask).argmax(dim=1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str, pooler_output: torch.Tensor | None = None) -> torch.Tensor:
    if how == "cls_pooled":
        return pooler_output if pooler_output is not None else hidden[:, 0]
    if how == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(mask)]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    summed = (hidden * weights).sum(dim=1)
    if how == "sum":
        return summed
    return summed / weights.sum(dim=1).clamp(min=1)
