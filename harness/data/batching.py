"""Turn tokenized examples into model batches: padding, length grouping, and sample packing.

Packing puts several examples in one row of up to ``max_length`` tokens with position ids restarting
at 0 for each, and no attention mask: transformers then derives a block-diagonal causal mask from the
position ids, so no token attends across examples. Each example's first label is masked, so no loss
term predicts one example from the previous one. Short alpaca rows padded to the longest in a batch
waste much of each step (see the baselines); packed rows waste almost nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from harness.data.formatting import IGNORE_INDEX, Example


@dataclass
class Batch:
    """Model inputs plus the counts that normalize the loss and measure throughput."""

    inputs: dict[str, torch.Tensor]
    num_tokens: int  # real, non-padding tokens
    num_targets: int  # label positions scored by the shifted next-token loss

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.inputs["input_ids"].shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> Batch:
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.num_tokens, self.num_targets)


def _batch(inputs: dict[str, torch.Tensor], num_tokens: int) -> Batch:
    return Batch(inputs, num_tokens, int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum()))


@dataclass
class PackedRow:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def _round_up(length: int, multiple: int | None) -> int:
    return length if not multiple else -(-length // multiple) * multiple


def pad_batch(examples: list[Example], pad_id: int, pad_to_multiple_of: int | None = None) -> Batch:
    """Right-pad to the longest example; padding is off in the attention mask and -100 in labels."""
    width = _round_up(max(len(e.input_ids) for e in examples), pad_to_multiple_of)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        attention_mask[row, :length] = 1
    return _batch(
        {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels},
        sum(len(e.input_ids) for e in examples),
    )


def pack_examples(examples: list[Example], max_length: int) -> list[PackedRow]:
    """Greedy in-order packing into rows of at most ``max_length`` tokens."""
    rows: list[PackedRow] = []
    current = PackedRow([], [], [])
    for example in examples:
        length = len(example.input_ids)
        if current.input_ids and len(current.input_ids) + length > max_length:
            rows.append(current)
            current = PackedRow([], [], [])
        current.input_ids.extend(example.input_ids)
        current.labels.extend([IGNORE_INDEX] + example.labels[1:])
        current.position_ids.extend(range(length))
    if current.input_ids:
        rows.append(current)
    return rows


def collate_packed(rows: list[PackedRow], pad_id: int, pad_to_multiple_of: int | None = None) -> Batch:
    """Stack packed rows; the padding tail is its own position run, so it is masked off like an example."""
    width = _round_up(max(len(r.input_ids) for r in rows), pad_to_multiple_of)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.arange(width).repeat(len(rows), 1)
    for index, row in enumerate(rows):
        length = len(row.input_ids)
        input_ids[index, :length] = torch.tensor(row.input_ids)
        labels[index, :length] = torch.tensor(row.labels)
        position_ids[index, :length] = torch.tensor(row.position_ids)
        position_ids[index, length:] = torch.arange(width - length)
    return _batch(
        {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}, sum(len(r.input_ids) for r in rows)
    )


def length_grouped_order(lengths: list[int], batch_size: int, rng: random.Random) -> list[int]:
    """The order transformers' ``LengthGroupedSampler`` (the HF Trainer's ``group_by_length``) gives:
    a random permutation sorted by length inside mega-batches of up to 50 batches, so a batch holds
    similar lengths (less padding), the longest batch first (an out-of-memory shows at once). Its
    torch generator is seeded from ``rng``, so the order still depends only on (seed, epoch)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(rng.getrandbits(63))
    return list(get_length_grouped_indices(lengths, batch_size, generator=generator))


def epoch_order(
    lengths: list[int], global_size: int, seed: int, epoch: int, *, group_by_length: bool = False, shuffle: bool = True
) -> list[int]:
    """The order in which an epoch visits its units (examples or packed rows): a function of (seed,
    epoch) only. Other trainers driven through the harness's data (harness.engines) read it here."""
    rng = random.Random(seed * 100_003 + epoch)
    if group_by_length:
        return length_grouped_order(lengths, global_size, rng)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    return order


def epoch_batches(
    examples: list[Example],
    *,
    batch_size: int,
    max_length: int,
    pad_id: int,
    seed: int,
    epoch: int,
    packing: bool = False,
    group_by_length: bool = False,
    shuffle: bool = True,
    pad_to_multiple_of: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> list[Batch]:
    """Every micro batch of one epoch, in order. The order depends only on (seed, epoch), which is what
    makes a resumed run see exactly the batches the uninterrupted run would have.

    With ``world_size`` > 1 (data parallel), each global batch of ``batch_size x world_size`` rows is
    split evenly and this rank gets its share; a last global batch too small to give every rank a row
    is dropped, so all ranks take the same number of steps."""
    global_size = batch_size * world_size
    # Packed rows are built once, in data order, and shuffled as rows: every epoch then has the same
    # rows and so the same number of steps (packing a reshuffled order would change the count).
    units: list[Any] = pack_examples(examples, max_length) if packing else examples
    lengths = [len(u.input_ids) for u in units]
    order = epoch_order(
        lengths, global_size, seed, epoch, group_by_length=group_by_length and not packing, shuffle=shuffle
    )
    items = [units[i] for i in order]
    collate = collate_packed if packing else pad_batch
    batches = []
    for start in range(0, len(items), global_size):
        chunk = items[start : start + global_size]
        if len(chunk) < world_size:
            break
        batches.append(collate(chunk[rank::world_size], pad_id, pad_to_multiple_of))
    return batches


def packed_prefix(examples: list[Example], max_length: int, rows: int) -> int:
    """How many leading examples fill the first ``rows`` packed rows (packing is in data order)."""
    packed = pack_examples(examples, max_length)
    return sum(sum(1 for position in row.position_ids if position == 0) for row in packed[:rows])
