"""Sequence packing (`trainer.packing`): short training rows packed into sequences of up to max_sequence_length
tokens, so that a batch is rows, not padding — with every row attending to itself only.

A pack is its rows' tokens end to end, with position ids that restart at 0 for each row and no attention mask.
transformers reads that layout as packed sequences (`masking_utils.find_packed_sequence_indices`: a position that is
not its predecessor's + 1 starts a new sequence) and builds a block-causal mask for eager and SDPA attention, or
varlen boundaries for flash attention; each row then sees exactly what it sees alone, so its per-token losses are
the unpacked run's. The first token of each row carries no loss (in a pack its predecessor is another row's last
token). The padding after a pack's last row is a sequence of its own, labelled -100.

Rows are assigned by best-fit decreasing (longest row first, into the fullest pack it still fits, within
`packing_max_sequences_per_pack` rows), TRL's `bfd` strategy. It is written here rather than called from TRL because
TRL's works on a `datasets.Dataset` (a dependency the runtime does not otherwise need) while these rows are ragged
numpy arrays; it is a dozen lines. Packing is deterministic, so a resumed run packs the same way.

Not every model's attention honours position ids as boundaries: `check_model` runs two short rows packed and alone
on the built model and refuses packing in one line when their logits differ, rather than let rows attend to each
other.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from tunefork.data.prompts import IGNORE, Encoded
from tunefork.data.tensors import TokenIds
from tunefork.errors import ConfigError, first_line


@dataclass(frozen=True)
class Packed:
    """Training rows (`Encoded`) grouped into packs: the loop batches packs as it would rows."""

    rows: Encoded
    packs: TokenIds  # the row indices of each pack
    lengths: np.ndarray  # tokens in each pack
    capacity: int

    def __len__(self) -> int:
        return len(self.packs)

    def take(self, index: np.ndarray) -> Packed:
        """Packs `index` (their rows stay where they are)."""
        return Packed(self.rows, self.packs.take(index), self.lengths[index], self.capacity)

    def members(self, index: np.ndarray) -> np.ndarray:
        return np.concatenate([self.packs.row(p) for p in index]) if len(index) else np.zeros(0, dtype=np.int64)

    def scored(self, index: np.ndarray) -> int:
        return self.rows.scored(self.members(index))

    def truncation(self) -> dict:
        return self.rows.truncation()

    def summary(self) -> dict:
        """What packing did, for efficiency.json: rows, packs, and the share of pack tokens that are real tokens."""
        tokens = int(self.rows.ids.lengths.sum())
        return {"rows": len(self.rows), "packs": len(self), "capacity": self.capacity,
                "fill": round(tokens / max(1, len(self) * self.capacity), 4)}


def pack(rows: Encoded, capacity: int, max_rows: int | None = None) -> Packed:
    """Best-fit decreasing: each row, longest first, goes into the pack with the least room that still holds it."""
    lengths = rows.ids.lengths
    free: list[tuple[int, int]] = []  # (room left, pack id), sorted: the first with room >= n is the best fit
    members: list[list[int]] = []
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, p = free.pop(at)
        else:
            room, p = capacity, len(members)
            members.append([])
        members[p].append(int(i))
        if room - n > 0 and (max_rows is None or len(members[p]) < max_rows):
            bisect.insort(free, (room - n, p))
    fill = [int(lengths[m].sum()) for m in members]
    return Packed(rows, TokenIds.from_rows([sorted(m) for m in members]), np.asarray(fill, dtype=np.int64), capacity)


def batch(packed: Packed, index: np.ndarray, pad_id: int) -> dict:
    """input_ids, position_ids (restarting per row) and labels for packs `index`, padded to the longest pack."""
    import torch

    width = int(packed.lengths[index].max())
    ids = np.full((len(index), width), pad_id, dtype=np.int64)
    labels = np.full((len(index), width), IGNORE, dtype=np.int64)
    positions = np.zeros((len(index), width), dtype=np.int64)
    for j, p in enumerate(index):
        at = 0
        for r in packed.packs.row(p):
            row = packed.rows.ids.row(r)
            n = len(row)
            ids[j, at : at + n] = row
            labels[j, at : at + n] = packed.rows.labels(r)
            labels[j, at] = IGNORE  # predicted by the previous row's last token: no loss
            positions[j, at : at + n] = np.arange(n)
            at += n
        positions[j, at:] = np.arange(width - at)  # the padding: a sequence of its own
    return {"input_ids": torch.from_numpy(ids), "position_ids": torch.from_numpy(positions),
            "labels": torch.from_numpy(labels)}


def check_model(model, vocab_size: int) -> None:
    """Refuse packing for a model whose attention lets packed rows see each other: two short rows, packed and alone,
    must give the second row the same logits."""
    import torch

    from tunefork.models.llm import logits

    first, second = torch.arange(3, 8) % vocab_size, torch.arange(11, 17) % vocab_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = logits(model, {"input_ids": second[None], "attention_mask": torch.ones(1, len(second), dtype=torch.long)})
            both = torch.cat([first, second])[None]
            positions = torch.cat([torch.arange(len(first)), torch.arange(len(second))])[None]
            packed = logits(model, {"input_ids": both, "position_ids": positions})[:, len(first):]
        same = torch.allclose(alone.float(), packed.float(), atol=1e-3, rtol=1e-3)
        reason = "" if same else f"the largest logit difference is {float((alone - packed).abs().max()):.3g}"
    except (TypeError, ValueError, RuntimeError) as exc:
        same, reason = False, first_line(exc)
    finally:
        model.train(was_training)
    if not same:
        raise ConfigError([f"trainer.packing: {type(model).__name__} does not keep packed rows apart "
                           f"(a row packed after another does not see what it sees alone: {reason}); set "
                           f"trainer.packing: false"])
