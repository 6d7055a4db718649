"""The built-in task set: deterministic, disjoint splits, exact-match scoring per family."""

from __future__ import annotations

import pytest

from harness.data.sources import Record
from harness.data.tasks import FAMILIES, generate_tasks, is_correct
from harness.errors import DataError


def test_same_seed_same_rows():
    a = generate_tasks(list(FAMILIES), 200, 0.1, seed=7)
    b = generate_tasks(list(FAMILIES), 200, 0.1, seed=7)
    assert a == b
    assert a != generate_tasks(list(FAMILIES), 200, 0.1, seed=8)


def test_held_out_shares_no_inputs():
    splits = generate_tasks(list(FAMILIES), 500, 0.2, seed=0)
    train = {(r.family, r.input) for r in splits.train}
    assert len(splits.held_out) == 100
    assert not train & {(r.family, r.input) for r in splits.held_out}


def test_every_family_is_in_the_held_out_split():
    splits = generate_tasks(["sort_numbers", "reverse_words"], 100, 0.1, seed=0)
    assert {r.family for r in splits.held_out} == {"sort_numbers", "reverse_words"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_answers_score_as_correct(family):
    for record in generate_tasks([family], 20, 0.0, seed=1).train:
        assert is_correct(record, record.output + "\nextra lines are ignored")


def test_sort_numbers_answer_is_sorted():
    record = generate_tasks(["sort_numbers"], 1, 0.0, seed=3).train[0]
    numbers = [int(n) for n in record.input.split(", ")]
    assert record.output == ", ".join(map(str, sorted(numbers)))


def test_scoring_normalizes_as_the_family_needs():
    words = Record(instruction="", input="a b", output="cloud river", family="reverse_words")
    assert is_correct(words, "  Cloud   RIVER ")
    upper = Record(instruction="", input="ab", output="CLOUD RIVER", family="uppercase")
    assert not is_correct(upper, "cloud river")
    numbers = Record(instruction="", input="", output="1, 2, 3", family="sort_numbers")
    assert is_correct(numbers, "1,2, 3") and not is_correct(numbers, "1, 3, 2")


def test_unknown_family():
    with pytest.raises(DataError, match="dataset.task_families: unknown family 'poetry'; allowed: sort_numbers"):
        generate_tasks(["poetry"], 10, 0.1, seed=0)
