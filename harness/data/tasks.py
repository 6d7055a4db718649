"""The built-in learnable task set: alpaca-format rows generated deterministically from a seed.

No public instruction data can be downloaded offline, and "the generated text is coherent" needs a
number, so the project makes its own: simple families whose answers are exactly checkable. The
held-out split shares no input with the train split, and each family has its own normalizer for
exact match (e.g. case does not matter for reversed words but is the point of ``uppercase``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from harness.data.sources import Record
from harness.errors import DataError

WORDS = (
    "apple river cloud stone tiger candle garden mirror window rocket silver forest ocean pencil castle "
    "dragon engine falcon guitar harbor island jacket kettle lemon marble needle orange planet quartz "
    "rabbit saddle tunnel violin walnut yellow zebra anchor bridge copper desert feather glacier hammer "
    "igloo jungle ladder meadow nickel oyster pepper quiver rainbow shadow thunder umbrella valley wizard "
    "basket cactus donkey eagle fossil goblet helmet ivory jigsaw koala lantern magnet nectar orchid "
    "parrot quill ribbon spider tomato unicorn velvet whistle yogurt zipper bamboo canyon dolphin ember "
    "fiddle granite hazel insect"
).split()
ORDINALS = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 5: "5th"}


@dataclass(frozen=True)
class TaskFamily:
    name: str
    instruction: str
    make: Callable[[random.Random], tuple[str, str]]  # -> (input, output)
    normalize: Callable[[str], str]


def _squash(text: str) -> str:
    return " ".join(text.split())


def _lower(text: str) -> str:
    return _squash(text).lower()


def _number_list(text: str) -> str:
    return ",".join(re.findall(r"-?\d+", text))


def _sort_numbers(rng: random.Random) -> tuple[str, str]:
    numbers = rng.sample(range(1, 100), rng.randint(4, 6))
    return ", ".join(map(str, numbers)), ", ".join(map(str, sorted(numbers)))


def _reverse_words(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 5))
    return " ".join(words), " ".join(reversed(words))


def _uppercase(rng: random.Random) -> tuple[str, str]:
    words = " ".join(rng.sample(WORDS, rng.randint(2, 4)))
    return words, words.upper()


def _add_numbers(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return f"{a} + {b}", str(a + b)


def _nth_item(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, 5)
    n = rng.randint(1, 5)
    return f"position {ORDINALS[n]}: " + ", ".join(words), words[n - 1]


FAMILIES: dict[str, TaskFamily] = {
    family.name: family
    for family in (
        TaskFamily("sort_numbers", "Sort these numbers in ascending order.", _sort_numbers, _number_list),
        TaskFamily("reverse_words", "Reverse the order of these words.", _reverse_words, _lower),
        TaskFamily("uppercase", "Rewrite this text in uppercase letters.", _uppercase, _squash),
        TaskFamily("add_numbers", "Add these two numbers and give only the sum.", _add_numbers, _squash),
        TaskFamily("nth_item", "Give the item at the stated position in the list.", _nth_item, _lower),
    )
}


@dataclass
class TaskSplits:
    train: list[Record]
    held_out: list[Record]


def generate_tasks(families: list[str], num_examples: int, held_out_fraction: float, seed: int) -> TaskSplits:
    """``num_examples`` rows spread evenly over ``families``; inputs are unique across both splits."""
    unknown = [name for name in families if name not in FAMILIES]
    if unknown:
        raise DataError(f"dataset.task_families: unknown family {unknown[0]!r}; allowed: {', '.join(FAMILIES)}")
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    rows: list[Record] = []
    for index in range(num_examples):
        family = FAMILIES[families[index % len(families)]]
        for _attempt in range(1000):
            task_input, output = family.make(rng)
            if (family.name, task_input) not in seen:
                break
        else:
            raise DataError(f"dataset.num_examples: {num_examples} is more than family {family.name} can make unique")
        seen.add((family.name, task_input))
        rows.append(Record(instruction=family.instruction, input=task_input, output=output, family=family.name))
    held_out_count = max(len(families), round(num_examples * held_out_fraction)) if held_out_fraction > 0 else 0
    # Rows are interleaved by family, so the tail holds every family in equal measure.
    split = len(rows) - held_out_count
    return TaskSplits(train=rows[:split], held_out=rows[split:])


def is_correct(record: Record, generated: str) -> bool:
    """Exact match on the first line of the generation, normalized as the record's family needs."""
    normalize = FAMILIES[record.family].normalize if record.family in FAMILIES else _squash
    first_line = generated.strip().split("\n", 1)[0] if generated.strip() else ""
    return normalize(first_line) == normalize(record.output)
