"""Prompt formatting, BOS/EOS, label masking, truncation, padding and the deterministic split."""

from __future__ import annotations

import hashlib
import json

import pytest

from harness.config import DatasetSection
from harness.data.formatting import (
    IGNORE_INDEX,
    PROMPT_NO_INPUT,
    PROMPT_WITH_INPUT,
    alpaca_prompt,
    pad_token_id,
    prepare_data,
    split_indices,
    tokenize_record,
)
from harness.data.sources import Record

WITH_INPUT = Record(instruction="Translate to French.", input="cheese", output="fromage")
NO_INPUT = Record(instruction="Name a color.", output="Blue is a calm color.")


@pytest.fixture(params=["tiny_tokenizer", "smollm2_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def test_stanford_templates():
    assert alpaca_prompt(WITH_INPUT) == PROMPT_WITH_INPUT.format(instruction="Translate to French.", input="cheese")
    assert alpaca_prompt(WITH_INPUT).endswith("### Input:\ncheese\n\n### Response:\n")
    assert alpaca_prompt(NO_INPUT).startswith("Below is an instruction that describes a task. Write")
    assert "### Input" not in alpaca_prompt(NO_INPUT) and PROMPT_NO_INPUT.count("{") == 1


@pytest.mark.parametrize("record", [WITH_INPUT, NO_INPUT], ids=["with_input", "no_input"])
def test_unmasked_labels_are_exactly_response_plus_eos(tokenizer, record):
    example = tokenize_record(record, tokenizer, max_length=512)
    targets = [label for label in example.labels if label != IGNORE_INDEX]
    assert targets[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(targets[:-1]) == record.output
    assert example.input_ids[-len(targets) :] == targets  # targets are the tail, prompt fully masked


def test_bos_follows_the_tokenizer_convention_once(tokenizer):
    example = tokenize_record(WITH_INPUT, tokenizer, max_length=512)
    own = tokenizer("x")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and own[0] == tokenizer.bos_token_id
    leading_bos = 0
    for token in example.input_ids:
        if token != tokenizer.bos_token_id:
            break
        leading_bos += 1
    assert leading_bos == (1 if adds_bos else 0)


def test_llama2_style_tokenizer_adds_bos(tiny_tokenizer):
    assert tokenize_record(NO_INPUT, tiny_tokenizer, 512).input_ids[:2] == [
        tiny_tokenizer.bos_token_id,
        tiny_tokenizer("B")["input_ids"][1],
    ]


def test_smollm2_tokenizer_adds_no_bos(smollm2_tokenizer):
    assert smollm2_tokenizer.bos_token_id not in tokenize_record(NO_INPUT, smollm2_tokenizer, 512).input_ids


def test_train_on_inputs_unmasks_the_prompt(tokenizer):
    example = tokenize_record(WITH_INPUT, tokenizer, max_length=512, train_on_inputs=True)
    assert example.labels == example.input_ids


def test_truncation_keeps_the_prompt_start(tokenizer):
    full = tokenize_record(NO_INPUT, tokenizer, max_length=512)
    prompt_length = full.labels.index(next(label for label in full.labels if label != IGNORE_INDEX))
    cut = tokenize_record(NO_INPUT, tokenizer, max_length=prompt_length + 1)
    assert cut.truncated and cut.input_ids == full.input_ids[: prompt_length + 1]
    assert cut.num_targets == 1


def test_row_whose_response_would_vanish_is_dropped(tokenizer):
    full = tokenize_record(NO_INPUT, tokenizer, max_length=512)
    prompt_length = full.labels.index(next(label for label in full.labels if label != IGNORE_INDEX))
    assert tokenize_record(NO_INPUT, tokenizer, max_length=prompt_length) is None


def test_dropped_and_truncated_rows_are_counted(tmp_path, tiny_tokenizer):
    path = tmp_path / "d.jsonl"
    rows = [
        {"instruction": "Hi", "output": "short"},
        {"instruction": "Hi", "output": "long " * 100},
        {"instruction": "very long instruction " * 40, "output": "x"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = prepare_data(DatasetSection(path=str(path), max_length=200, train_split=1.0), tiny_tokenizer, seed=0)
    assert data.stats.truncated == 1
    assert data.stats.dropped == {"response cut to nothing by max_length": 1}
    assert data.stats.rows_read == 3 and len(data.train) == 2


def test_pad_token_falls_back_to_eos(tiny_tokenizer, smollm2_tokenizer):
    assert tiny_tokenizer.pad_token is None and pad_token_id(tiny_tokenizer) == tiny_tokenizer.eos_token_id
    assert pad_token_id(smollm2_tokenizer) == smollm2_tokenizer.pad_token_id


def test_conversation_targets_only_assistant_turns(tiny_tokenizer):
    record = Record(
        messages=[
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Ciao"},
        ]
    )
    example = tokenize_record(record, tiny_tokenizer, max_length=512)
    targets = tiny_tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert "Hello!" in targets and "Ciao" in targets
    assert "Hi there" not in targets and "Bye" not in targets


def test_split_is_deterministic_and_recorded():
    train, held = split_indices(1000, 0.9, seed=42)
    assert (len(train), len(held)) == (900, 100) and not set(train) & set(held)
    digest = hashlib.sha256(json.dumps([train, held]).encode()).hexdigest()
    assert digest == hashlib.sha256(json.dumps(list(split_indices(1000, 0.9, seed=42))).encode()).hexdigest()
    assert digest[:16] == "3b312344d6db8e51"  # recorded: a change here changes every split
    assert split_indices(1000, 0.9, seed=43) != (train, held)


def test_full_train_split_has_no_validation():
    assert split_indices(10, 1.0, seed=0) == (list(range(10)), [])
