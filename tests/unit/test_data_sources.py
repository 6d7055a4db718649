"""Data sources: every file kind and dataset.type, and every bad-data message."""

from __future__ import annotations

import json

import pytest

from harness.data.sources import load_rows, write_subset
from harness.errors import DataError

ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Translate to French.", "input": "cheese", "output": "fromage"},
    {"instruction": "Name a color.", "output": "Blue."},  # input may be absent
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def alpaca_jsonl(tmp_path):
    return write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)


def test_jsonl(alpaca_jsonl):
    loaded = load_rows(str(alpaca_jsonl), "alpaca")
    assert loaded.rows_read == 3
    assert [r.output for r in loaded.records] == ["Eat well, sleep, move.", "fromage", "Blue."]
    assert loaded.records[2].input == ""


def test_json_array(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA, indent=2))
    assert [r.instruction for r in load_rows(str(path), "alpaca").records] == [r["instruction"] for r in ALPACA]


def test_parquet(tmp_path):
    import datasets

    path = tmp_path / "train-00000-of-00001.parquet"
    datasets.Dataset.from_list([dict(r, input=r.get("input", "")) for r in ALPACA]).to_parquet(str(path))
    assert load_rows(str(path), "alpaca_cleaned").records[1].input == "cheese"


def test_saved_datasets_directory(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA[:2])}).save_to_disk(str(tmp_path / "saved"))
    assert len(load_rows(str(tmp_path / "saved"), "alpaca").records) == 2


def test_dolly_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "dolly.jsonl",
        [{"instruction": "Summarize.", "context": "A long text.", "response": "Short.", "category": "summarization"}],
    )
    record = load_rows(str(path), "dolly").records[0]
    assert (record.instruction, record.input, record.output) == ("Summarize.", "A long text.", "Short.")


def test_sharegpt_conversation(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}],
    )
    assert load_rows(str(path), "sharegpt").records[0].messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]


def test_oasst_conversation(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "prompter", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}],
    )
    assert load_rows(str(path), "oasst").records[0].messages[0]["role"] == "user"


def test_limit_keeps_the_first_rows(alpaca_jsonl):
    assert [r.output for r in load_rows(str(alpaca_jsonl), "alpaca", limit=2).records] == [
        "Eat well, sleep, move.",
        "fromage",
    ]


BAD_ROWS = [
    ({"instruction": "x"}, "row 2: field 'output': missing"),
    ({"instruction": "x", "output": 5}, "row 2: field 'output': must be a string, got int"),
    ({"instruction": "x", "output": "   "}, "row 2: field 'output': empty output"),
    ({"output": "y"}, "row 2: field 'instruction': missing"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_bad_row_message(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [ALPACA[0], bad, ALPACA[1]])
    with pytest.raises(DataError) as caught:
        load_rows(str(path), "alpaca")
    assert str(caught.value) == f"{path}: {message}"


def test_skip_invalid_drops_and_counts(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl", [ALPACA[0], {"instruction": "x"}, {"instruction": "x", "output": ""}, ALPACA[1]]
    )
    loaded = load_rows(str(path), "alpaca", skip_invalid=True)
    assert len(loaded.records) == 2 and loaded.rows_read == 4
    assert loaded.dropped == {"field 'output': missing": 1, "field 'output': empty output": 1}


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match=r"empty.jsonl: empty file \(no rows\)$"):
        load_rows(str(path), "alpaca")


def test_undecodable_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(ALPACA[0]).encode() + b"\n" + '{"instruction": "caf\xe9", "output": "x"}\n'.encode("latin-1")
    )
    with pytest.raises(DataError, match=r"latin1.jsonl: line 2: undecodable bytes \(not UTF-8\)"):
        load_rows(str(path), "alpaca")


def test_invalid_json_names_the_row(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + "\n{not json}\n")
    with pytest.raises(DataError, match=r"broken.jsonl: row 2: invalid JSON"):
        load_rows(str(path), "alpaca")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_rows(str(path), "alpaca")


def test_hub_id_offline_names_the_places_searched(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"^tatsu-lab/alpaca: not found locally and HF_HUB_OFFLINE=1; searched .*"):
        load_rows("tatsu-lab/alpaca", "alpaca")


def test_conversation_without_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    with pytest.raises(DataError, match="row 1: field 'messages': no non-empty assistant turn"):
        load_rows(str(path), "oasst")


def test_write_subset(tmp_path, alpaca_jsonl):
    out = tmp_path / "sub" / "first2.jsonl"
    assert write_subset(str(alpaca_jsonl), 2, out) == 2
    assert [json.loads(line)["output"] for line in out.read_text().splitlines()] == [
        "Eat well, sleep, move.",
        "fromage",
    ]


def test_real_alpaca_1k_loads(alpaca_1k):
    loaded = load_rows(str(alpaca_1k), "alpaca")
    assert loaded.rows_read == 1000 and len(loaded.records) == 1000
    assert sum(1 for r in loaded.records if r.input) == 392
