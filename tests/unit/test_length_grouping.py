"""How many examples the first packed rows hold, pinned through packed_prefix (a mutmut survivor in
batching.py). Which examples share a batch under group_by_length is transformers' own
get_length_grouped_indices, tested equal to LengthGroupedSampler in test_library_parity.py."""

from __future__ import annotations

from harness.data.batching import epoch_batches, packed_prefix
from harness.data.formatting import Example


def examples_of_lengths(lengths):
    return [Example(list(range(3, 3 + n)), list(range(3, 3 + n))) for n in lengths]


def grouped_batches(lengths, batch_size, seed=0):
    batches = epoch_batches(
        examples_of_lengths(lengths),
        batch_size=batch_size,
        max_length=512,
        pad_id=0,
        seed=seed,
        epoch=0,
        group_by_length=True,
    )
    return [sorted(int(n) for n in b.inputs["attention_mask"].sum(dim=1)) for b in batches]


def test_packed_prefix_counts_one_token_examples():
    examples = examples_of_lengths([1, 4, 1, 6, 1])
    assert packed_prefix(examples, max_length=8, rows=1) == 3  # [1, 4, 1] fill the first row of 8
    assert packed_prefix(examples, max_length=8, rows=5) == 5
