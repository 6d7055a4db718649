"""Data preparation end to end through its public functions: prompts for generation, conversation
targets, chat-template errors, split boundaries, and the counts prepare_data reports.

Written against the mutants mutmut left alive in harness/data/formatting.py: each test pins a value
that a plausible slip (a flipped flag, an off-by-one, a dropped argument) would change."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from harness.config import BUILTIN_TASKS, DatasetSection
from harness.data.formatting import (
    IGNORE_INDEX,
    pad_token_id,
    prepare_data,
    prompt_ids,
    reference_answer,
    split_indices,
    tokenize_record,
)
from harness.data.sources import Record
from harness.errors import DataError

RENDERED_PROMPT = (
    "<|system|>\nBe brief.</s>\n<|user|>\nHi there</s>\n<|assistant|>\nHello!</s>\n<|user|>\nBye</s>\n<|assistant|>\n"
)
CONVERSATION = Record(
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Ciao"},
    ]
)


def test_pad_token_is_the_tokenizers_own_when_it_has_one():
    assert pad_token_id(SimpleNamespace(pad_token_id=7, eos_token_id=2)) == 7
    assert pad_token_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2


def test_conversation_prompt_ends_in_the_generation_prompt_before_the_last_answer(tiny_tokenizer):
    text = tiny_tokenizer.decode(prompt_ids(CONVERSATION, tiny_tokenizer))
    print(repr(text))
    assert text == RENDERED_PROMPT
    assert reference_answer(CONVERSATION) == "Ciao"
    assert reference_answer(Record(messages=[{"role": "user", "content": "Hi"}])) == ""
    assert reference_answer(Record("Say hi.", "", "Hi!")) == "Hi!"


def test_alpaca_prompt_starts_with_the_tokenizers_bos(tiny_tokenizer):
    ids = prompt_ids(Record("Say hi.", "", "Hi!"), tiny_tokenizer)
    assert ids[0] == tiny_tokenizer.bos_token_id and ids.count(tiny_tokenizer.bos_token_id) == 1


def test_conversation_targets_are_exactly_the_assistant_turns(tiny_tokenizer):
    example = tokenize_record(CONVERSATION, tiny_tokenizer, max_length=512)
    rendered = tiny_tokenizer.decode(example.input_ids)
    targets = tiny_tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    print(repr(targets))
    assert rendered == RENDERED_PROMPT + "Ciao</s>\n"
    assert targets == "Hello!</s>\nCiao</s>\n"  # the "<|assistant|>" header is prompt, not target
    first_answer = Record(messages=[{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Ok"}])
    first = tokenize_record(first_answer, tiny_tokenizer, max_length=512)
    assert tiny_tokenizer.decode([t for t in first.labels if t != IGNORE_INDEX]) == "<|assistant|>\nHi</s>\n"


class ListTokenizer:
    """A tokenizer whose chat template returns a plain list of ids (older transformers did)."""

    def __init__(self, template):
        self.chat_template = template

    def apply_chat_template(self, turns, tokenize, add_generation_prompt):
        text = self.chat_template(turns, add_generation_prompt)
        return [ord(c) for c in text]


def test_chat_template_returning_a_plain_list_is_used_as_is():
    def template(turns, generation):
        return "".join(f"[{t['role']}]{t['content']}" for t in turns) + ("[assistant]" if generation else "")

    ids = prompt_ids(CONVERSATION, ListTokenizer(template))
    assert "".join(map(chr, ids)) == "[system]Be brief.[user]Hi there[assistant]Hello![user]Bye[assistant]"


def test_template_that_does_not_render_prefixes_incrementally_is_refused():
    def template(turns, generation):  # a turn count up front changes every earlier prefix
        return f"{len(turns)}:" + "".join(t["content"] for t in turns)

    with pytest.raises(DataError) as caught:
        tokenize_record(CONVERSATION, ListTokenizer(template), max_length=512)
    assert str(caught.value) == "dataset.type: the chat template does not render conversations incrementally"


@pytest.mark.parametrize("tokenizer", [ListTokenizer(None), object()], ids=["template None", "no template attribute"])
def test_conversation_without_chat_template_is_refused(tokenizer):
    with pytest.raises(DataError) as caught:
        prompt_ids(CONVERSATION, tokenizer)
    assert str(caught.value) == "dataset.type: conversation data needs a tokenizer with a chat template"


def test_generation_prompt_that_rewrites_earlier_turns_is_not_a_segment():
    """A template whose generation prompt does not extend the rendered history: the answer's tokens are
    still the targets, taken from the incremental full renderings."""

    def template(turns, generation):
        return ("<gen>" if generation else "") + "".join(f"[{t['role']}]{t['content']}" for t in turns)

    example = tokenize_record(CONVERSATION, ListTokenizer(template), max_length=512)
    targets = "".join(chr(t) for t in example.labels if t != IGNORE_INDEX)
    assert (
        "".join(map(chr, example.input_ids))
        == "[system]Be brief.[user]Hi there[assistant]Hello![user]Bye[assistant]Ciao"
    )
    assert targets == "[assistant]Hello![assistant]Ciao"


def test_row_exactly_at_max_length_is_not_truncated(tiny_tokenizer):
    full = tokenize_record(Record("Say hi.", "", "Hi!"), tiny_tokenizer, max_length=512)
    exact = tokenize_record(Record("Say hi.", "", "Hi!"), tiny_tokenizer, max_length=len(full.input_ids))
    assert exact.truncated is False and exact.input_ids == full.input_ids
    shorter = tokenize_record(Record("Say hi.", "", "Hi!"), tiny_tokenizer, max_length=len(full.input_ids) - 1)
    assert shorter.truncated is True and len(shorter.input_ids) == len(full.input_ids) - 1


@pytest.mark.parametrize(
    ("count", "train_split", "train_size"),
    [(10, 0.01, 1), (10, 0.99, 9), (3, 0.9, 2), (2, 0.5, 1), (10, 0.5, 5), (5, 1.0, 5)],
)
def test_split_keeps_at_least_one_row_on_each_side(count, train_split, train_size):
    train, held = split_indices(count, train_split, seed=0)
    assert (len(train), len(held)) == (train_size, count - train_size)
    assert sorted(train + held) == list(range(count))


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prepare_data_counts_what_it_read_kept_cut_and_dropped(tmp_path, tiny_tokenizer):
    rows = [{"instruction": f"Repeat {i}", "output": f"Number {i}"} for i in range(8)]
    rows[3]["output"] = "long " * 100  # truncated
    rows.insert(5, {"instruction": "very long instruction " * 40, "output": "x"})  # cut to nothing
    rows.insert(6, {"instruction": "", "output": "no instruction"})  # invalid row
    path = write_rows(tmp_path / "d.jsonl", rows)
    section = DatasetSection(path=path, max_length=200, train_split=0.75, skip_invalid=True, num_examples=9)
    data = prepare_data(section, tiny_tokenizer, seed=3)
    kept = data.train + data.validation
    print(data.stats.to_dict(), len(data.train), len(data.validation), len(data.held_out))
    assert data.source == path
    assert data.stats.rows_read == 9  # num_examples rows read, the invalid one included
    assert data.stats.dropped == {"response cut to nothing by max_length": 1, **_invalid(data)}
    assert len(data.held_out) == 2 and len(data.train) + 1 == 6  # 8 valid rows: 6 train (one dropped), 2 held
    assert len(data.validation) == 2 and all(e is not None for e in kept)
    assert data.stats.truncated == 1
    assert data.stats.tokens == sum(len(e.input_ids) for e in kept)
    assert data.stats.target_tokens == sum(e.num_targets for e in kept)
    for record, example in zip(data.held_out, data.validation, strict=True):  # same rows, same order
        targets = tiny_tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
        assert (reference_answer(record) + "</s>").startswith(targets)
    assert data.stats.to_dict() == {
        "rows_read": 9,
        "dropped": dict(data.stats.dropped),
        "truncated": 1,
        "tokens": data.stats.tokens,
        "target_tokens": data.stats.target_tokens,
    }
    again = prepare_data(section, tiny_tokenizer, seed=3)
    assert [r.instruction for r in again.held_out] == [r.instruction for r in data.held_out]
    other = prepare_data(section, tiny_tokenizer, seed=4)
    assert [r.instruction for r in other.held_out] != [r.instruction for r in data.held_out]


def _invalid(data):
    """The dropped-row reason load_rows gives for the row without an instruction (its own wording)."""
    return {reason: count for reason, count in data.stats.dropped.items() if "max_length" not in reason}


def test_prepare_data_without_skip_invalid_refuses_the_bad_row(tmp_path, tiny_tokenizer):
    path = write_rows(
        tmp_path / "d.jsonl", [{"instruction": "Hi", "output": "Hello"}, {"instruction": "", "output": "x"}]
    )
    with pytest.raises(DataError):
        prepare_data(DatasetSection(path=path, train_split=1.0), tiny_tokenizer, seed=0)
    data = prepare_data(DatasetSection(path=path, train_split=1.0, skip_invalid=True), tiny_tokenizer, seed=0)
    assert sum(data.stats.dropped.values()) == 1 and len(data.train) == 1


def test_train_on_inputs_reaches_every_example(tmp_path, tiny_tokenizer):
    path = write_rows(tmp_path / "d.jsonl", [{"instruction": f"Hi {i}", "output": "Hello"} for i in range(4)])
    data = prepare_data(DatasetSection(path=path, train_split=0.5, train_on_inputs=True), tiny_tokenizer, seed=0)
    assert all(e.labels == e.input_ids for e in data.train + data.validation)


def test_nothing_left_after_tokenization_names_the_file_and_the_reasons(tmp_path, tiny_tokenizer):
    path = write_rows(tmp_path / "d.jsonl", [{"instruction": "long " * 100, "output": "x"}] * 2)
    with pytest.raises(DataError) as caught:
        prepare_data(DatasetSection(path=path, max_length=50, train_split=1.0), tiny_tokenizer, seed=0)
    assert str(caught.value) == (
        f"{path}: no training example left after tokenization (dropped: {{'response cut to nothing by max_length': 2}})"
    )


def test_builtin_tasks_follow_count_split_families_and_seed(tiny_tokenizer):
    section = DatasetSection(
        path=BUILTIN_TASKS, num_examples=20, train_split=0.8, max_length=1024, task_families=["reverse_words"]
    )
    data = prepare_data(section, tiny_tokenizer, seed=0)
    assert data.source == BUILTIN_TASKS
    assert (data.stats.rows_read, len(data.train), len(data.held_out), len(data.validation)) == (20, 16, 4, 4)
    assert all("reverse" in r.instruction.lower() for r in data.held_out)
    again = prepare_data(section, tiny_tokenizer, seed=0)
    assert [r.input for r in again.held_out] == [r.input for r in data.held_out]
    other = prepare_data(section, tiny_tokenizer, seed=1)
    assert [r.input for r in other.held_out] != [r.input for r in data.held_out]
    everything = prepare_data(dataclasses.replace(section, train_split=1.0), tiny_tokenizer, seed=0)
    assert (len(everything.train), len(everything.held_out)) == (20, 0)
    default = prepare_data(DatasetSection(path=BUILTIN_TASKS, train_split=0.9, max_length=1024), tiny_tokenizer, seed=0)
    assert default.stats.rows_read == 1000 and len(default.held_out) == 100
