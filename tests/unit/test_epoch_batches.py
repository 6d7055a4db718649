"""``epoch_batches`` end to end on literal examples: the order recorded for (seed, epoch) (torchtune's
practice: a change of order changes every recorded loss, so it must be deliberate), what each mode
puts in a batch, the counts a batch carries, padding to a multiple, and each rank's share of a global
batch. Example i has i + 1 tokens, so a batch's lengths show which examples it holds."""

from __future__ import annotations

import pytest
import torch

from harness.data.batching import Batch, collate_packed, epoch_batches, epoch_order, pack_examples, pad_batch
from harness.data.formatting import IGNORE_INDEX, Example

pytestmark = pytest.mark.unit

EXAMPLES = [Example(list(range(1, 2 + i)), list(range(1, 2 + i))) for i in range(10)]


def batches(**options):
    defaults = {"batch_size": 2, "max_length": 64, "pad_id": 0, "seed": 1, "epoch": 0}
    return epoch_batches(EXAMPLES, **(defaults | options))


def example_indices(batch: Batch) -> list[int]:
    """Which examples a padded batch holds (example i is i + 1 tokens long)."""
    return [int(row.sum()) - 1 for row in batch.inputs["attention_mask"]]


# Recorded 2026-12-03 with torch 2.13.0 and transformers 5.24.0 (length grouping is transformers'
# get_length_grouped_indices; with 10 examples its mega-batches are a single batch of 2).
RECORDED_ORDER = {
    (1, 0, False): [3, 8, 4, 1, 9, 7, 6, 0, 2, 5],
    (1, 1, False): [3, 7, 6, 8, 1, 4, 2, 9, 5, 0],
    (2, 0, False): [5, 2, 7, 1, 9, 3, 4, 0, 6, 8],
    (1, 0, True): [9, 8, 3, 0, 6, 1, 4, 2, 7, 5],
    (1, 1, True): [9, 6, 3, 0, 8, 2, 7, 4, 5, 1],
}


@pytest.mark.parametrize(("seed", "epoch", "grouped"), list(RECORDED_ORDER), ids=str)
def test_the_order_of_an_epoch_is_the_recorded_one(seed, epoch, grouped):
    options = {"group_by_length": True} if grouped else {}  # the default is not grouped
    got = [i for b in batches(seed=seed, epoch=epoch, **options) for i in example_indices(b)]
    assert got == RECORDED_ORDER[(seed, epoch, grouped)]


def test_without_shuffling_the_examples_keep_their_order():
    assert [i for b in batches(shuffle=False) for i in example_indices(b)] == list(range(10))


def test_padded_batches_hold_whole_examples_with_a_long_mask_and_no_positions():
    got = batches()
    assert [b.shape[0] for b in got] == [2] * 5
    for batch in got:
        assert set(batch.inputs) == {"input_ids", "attention_mask", "labels"}
        assert {t.dtype for t in batch.inputs.values()} == {torch.long}


def test_packed_batches_hold_rows_of_several_examples_with_positions_and_no_mask():
    got = batches(packing=True, max_length=12)
    rows = pack_examples(EXAMPLES, 12)
    assert sum(b.shape[0] for b in got) == len(rows) < len(EXAMPLES)
    assert all(set(b.inputs) == {"input_ids", "labels", "position_ids"} for b in got)
    assert sum(b.num_tokens for b in got) == sum(len(e.input_ids) for e in EXAMPLES)


def test_packing_ignores_length_grouping_and_shuffles_whole_rows():
    plain = batches(packing=True, max_length=12)
    grouped = batches(packing=True, max_length=12, group_by_length=True)
    assert [b.inputs["input_ids"].tolist() for b in grouped] == [b.inputs["input_ids"].tolist() for b in plain]


@pytest.mark.parametrize("packing", [False, True])
def test_batches_are_padded_to_the_multiple_asked_for(packing):
    got = batches(packing=packing, max_length=12, pad_to_multiple_of=8)
    assert {b.shape[1] % 8 for b in got} == {0}


def test_a_batch_counts_its_real_tokens_and_its_shifted_targets():
    example = Example([5, 6, 7, 8], [IGNORE_INDEX, 6, 7, 8])  # position 0 is never a target
    batch = pad_batch([example, Example([5, 6], [5, 6])], pad_id=0)
    assert (batch.num_tokens, batch.num_targets) == (6, 4)
    packed = collate_packed(pack_examples([example, Example([5, 6], [5, 6])], 16), pad_id=0)
    assert (packed.num_tokens, packed.num_targets) == (6, 4)  # each example's first label is masked


def test_moving_a_batch_keeps_its_counts():
    batch = pad_batch(EXAMPLES[:2], pad_id=0).to("cpu")
    assert (batch.num_tokens, batch.num_targets) == (3, 1)


def test_an_example_that_exactly_fills_a_packed_row_stays_in_it():
    rows = pack_examples([Example([1, 2, 3], [1, 2, 3]), Example([4, 5, 6], [4, 5, 6])], 6)
    assert [r.input_ids for r in rows] == [[1, 2, 3, 4, 5, 6]]


@pytest.mark.parametrize(
    ("num_examples", "rows_per_rank"),
    [(6, ([2, 1], [2, 1])), (5, ([2], [2])), (3, ([2], [1])), (2, ([1], [1])), (1, ([], []))],
)
def test_each_rank_gets_its_share_of_every_global_batch_and_a_too_short_last_one_is_dropped(
    num_examples, rows_per_rank
):
    """batch_size 2 on 2 ranks: global batches of 4 rows, dealt out row by row; a last global batch
    of fewer rows than ranks is dropped, so every rank takes the same number of steps."""
    options = {"batch_size": 2, "max_length": 64, "pad_id": 0, "seed": 1, "epoch": 0, "world_size": 2}
    examples = EXAMPLES[:num_examples]
    ranks = [epoch_batches(examples, rank=rank, **options) for rank in (0, 1)]
    assert tuple([b.shape[0] for b in r] for r in ranks) == rows_per_rank
    single = epoch_batches(examples, batch_size=4, max_length=64, pad_id=0, seed=1, epoch=0)
    for step in range(len(rows_per_rank[0])):
        shares = [example_indices(r[step]) for r in ranks]
        assert sorted(shares[0] + shares[1]) == sorted(example_indices(single[step]))
        assert not set(shares[0]) & set(shares[1])


def test_epoch_order_by_default_shuffles_without_grouping():
    """The TRL engine's sampler calls it with the defaults for the shuffle."""
    assert epoch_order([i + 1 for i in range(10)], 2, 1, 0) == RECORDED_ORDER[(1, 0, False)]
