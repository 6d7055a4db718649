"""Prompt formatting, tokenization and label masking, plus the deterministic train/validation split.

An instruction record becomes the Stanford alpaca prompt followed by the response and EOS. Labels are
-100 on the prompt (unless ``train_on_inputs``) so the loss covers exactly response + EOS. BOS
follows the tokenizer's own convention: it is added once when the tokenizer adds it, never twice.
Conversations are rendered through the tokenizer's chat template; only assistant turns are targets.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harness.config import BUILTIN_TASKS, DatasetSection
from harness.data.sources import LoadedRows, Record, load_rows
from harness.data.tasks import generate_tasks
from harness.errors import ConfigError, DataError

IGNORE_INDEX = -100

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(record: Record) -> str:
    template = PROMPT_WITH_INPUT if record.input.strip() else PROMPT_NO_INPUT
    return template.format(instruction=record.instruction, input=record.input)


@dataclass
class Example:
    """One tokenized row: ``labels`` is -100 wherever the loss must not look."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def set_pad_token(tokenizer: Any, token: str) -> None:
    """Pad with ``token`` (axolotl's ``special_tokens.pad_token``). It must be in the vocabulary
    already: a new token would need a new embedding row, which this harness does not train."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ConfigError(f"dataset.pad_token: {token!r} is not in the tokenizer's vocabulary; use one of its tokens")
    tokenizer.pad_token = token


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's own pad token, else EOS; padding is always masked out of attention and labels."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _segments_for_record(record: Record, tokenizer: Any) -> list[tuple[list[int], bool]]:
    """(token ids, is_target) pieces in order."""
    if record.messages:
        return _conversation_segments(record.messages, tokenizer)
    response_ids = tokenizer(record.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [(prompt_ids(record, tokenizer), False), (response_ids, True)]


def _last_assistant(messages: list[dict[str, str]]) -> int:
    return max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))


def prompt_ids(record: Record, tokenizer: Any) -> list[int]:
    """The tokens a model is prompted with to produce ``reference_answer(record)``, exactly as training
    formats them: the alpaca template, or a conversation up to its last assistant turn through the
    tokenizer's chat template with the generation prompt."""
    if record.messages:
        return _render_chat(tokenizer, record.messages[: _last_assistant(record.messages)], True)
    return list(tokenizer(alpaca_prompt(record), add_special_tokens=True)["input_ids"])


def reference_answer(record: Record) -> str:
    """The answer a held-out record expects: its output, or its last assistant turn."""
    if record.messages:
        index = _last_assistant(record.messages)
        return record.messages[index]["content"] if index < len(record.messages) else ""
    return record.output


def _render_chat(tokenizer: Any, turns: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("dataset.type: conversation data needs a tokenizer with a chat template")
    ids = tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=generation_prompt)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def _conversation_segments(messages: list[dict[str, str]], tokenizer: Any) -> list[tuple[list[int], bool]]:
    """Render prefixes through the chat template; each assistant turn's new tokens are targets."""

    segments: list[tuple[list[int], bool]] = []
    done: list[int] = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            before = _render_chat(tokenizer, messages[:index], True) if index else []
            if before[: len(done)] == done and len(before) > len(done):
                segments.append((before[len(done) :], False))
                done = before
        full = _render_chat(tokenizer, messages[: index + 1], False)
        if full[: len(done)] != done:
            raise DataError("dataset.type: the chat template does not render conversations incrementally")
        segments.append((full[len(done) :], message["role"] == "assistant"))
        done = full
    return segments


def tokenize_record(record: Record, tokenizer: Any, max_length: int, train_on_inputs: bool = False) -> Example | None:
    """Tokenize and mask one record; ``None`` when truncation would leave no target token."""
    input_ids: list[int] = []
    labels: list[int] = []
    is_response: list[bool] = []
    for ids, is_target in _segments_for_record(record, tokenizer):
        input_ids.extend(ids)
        labels.extend(ids if (is_target or train_on_inputs) else [IGNORE_INDEX] * len(ids))
        is_response.extend([is_target] * len(ids))
    truncated = len(input_ids) > max_length
    if truncated:
        # Keep the prompt's start; what is cut is the end of the response.
        input_ids, labels, is_response = input_ids[:max_length], labels[:max_length], is_response[:max_length]
    if not any(is_response):
        return None
    return Example(input_ids, labels, truncated)


@dataclass
class DataStats:
    rows_read: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    tokens: int = 0
    target_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "dropped": dict(self.dropped),
            "truncated": self.truncated,
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
        }


@dataclass
class PreparedData:
    """Tokenized train/validation examples, the held-out records for generation checks, and counts."""

    train: list[Example]
    validation: list[Example]
    held_out: list[Record]
    stats: DataStats
    source: str


def split_indices(count: int, train_split: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded permutation cut at ``train_split``: the same config always gives the same split."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    cut = count if train_split >= 1 else max(1, min(count - 1, round(count * train_split)))
    return sorted(order[:cut]), sorted(order[cut:])


def load_records(dataset: DatasetSection, seed: int) -> tuple[list[Record], list[Record], LoadedRows | None]:
    """(train records, held-out records, raw load info); the built-in set comes pre-split."""
    if dataset.path == BUILTIN_TASKS:
        splits = generate_tasks(dataset.task_families, dataset.num_examples or 1000, 1 - dataset.train_split, seed)
        return splits.train, splits.held_out, None
    loaded = load_rows(dataset.path, dataset.type, skip_invalid=dataset.skip_invalid, limit=dataset.num_examples)
    train_index, held_index = split_indices(len(loaded.records), dataset.train_split, seed)
    return [loaded.records[i] for i in train_index], [loaded.records[i] for i in held_index], loaded


def tokenize_records(records: list[Record], tokenizer: Any, dataset: DatasetSection, stats: DataStats) -> list[Example]:
    examples = []
    for record in records:
        example = tokenize_record(record, tokenizer, dataset.max_length, dataset.train_on_inputs)
        if example is None:
            stats.dropped["response cut to nothing by max_length"] += 1
            continue
        stats.truncated += example.truncated
        stats.tokens += len(example.input_ids)
        stats.target_tokens += example.num_targets
        examples.append(example)
    return examples


def prepare_data(dataset: DatasetSection, tokenizer: Any, seed: int) -> PreparedData:
    """Load, split and tokenize a config's data."""
    train_records, held_out, loaded = load_records(dataset, seed)
    stats = DataStats(rows_read=loaded.rows_read if loaded else len(train_records) + len(held_out))
    if loaded:
        stats.dropped.update(loaded.dropped)
    train = tokenize_records(train_records, tokenizer, dataset, stats)
    validation = tokenize_records(held_out, tokenizer, dataset, stats)
    if not train:
        raise DataError(f"{dataset.path}: no training example left after tokenization (dropped: {dict(stats.dropped)})")
    return PreparedData(train, validation, held_out, stats, loaded.source if loaded else BUILTIN_TASKS)
