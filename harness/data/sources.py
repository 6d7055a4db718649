"""Read instruction data (JSONL, JSON array, parquet, a saved ``datasets`` directory, or a hub id)
through ``datasets`` and normalize each row, by a small field table per ``dataset.type``, into either
an instruction record (instruction, input, output) or a conversation (a list of role/content turns).

Bad rows get one line naming the file, the row (1-based) and the field; with ``skip_invalid`` they are
dropped and counted by reason instead.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import DataError

# dataset.type -> our field -> the source's field. One table, no if-chains.
INSTRUCTION_FIELDS: dict[str, dict[str, str]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "alpaca_cleaned": {"instruction": "instruction", "input": "input", "output": "output"},
    "dolly": {"instruction": "instruction", "input": "context", "output": "response"},
}
# dataset.type -> (list field, role key, content key)
CONVERSATION_FIELDS: dict[str, tuple[str, str, str]] = {
    "oasst": ("messages", "role", "content"),
    "sharegpt": ("conversations", "from", "value"),
}
ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
}
OPTIONAL_FIELDS = {"input"}


@dataclass
class Record:
    """One normalized row: an instruction triple, or ``messages`` for a conversation."""

    instruction: str = ""
    input: str = ""
    output: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    family: str = ""  # the built-in task family, for per-family scoring


@dataclass
class LoadedRows:
    records: list[Record]
    source: str
    rows_read: int
    dropped: Counter[str] = field(default_factory=Counter)


def _check_text_file(path: Path) -> None:
    """Empty files and undecodable bytes get a line and row number before ``datasets`` sees them."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: empty file (no rows)")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: undecodable bytes (not UTF-8) at byte {exc.start}") from None


def _json_syntax_error(path: Path) -> str:
    """Locate a JSON syntax error (the ``datasets`` message does not say where)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}"
        return f"{path}: invalid JSON"
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                return f"{path}: row {number}: invalid JSON: {exc.msg}"
    return f"{path}: invalid JSON lines"


def _load_table(source: str) -> Any:
    """The rows as a ``datasets.Dataset`` (memory-mapped Arrow)."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source)
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DataError(f"{path}: not a directory saved by datasets ({type(exc).__name__})") from None
        return loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".json", ".jsonl"):
            _check_text_file(path)
            builder = "json"
        elif suffix == ".parquet":
            builder = "parquet"
        else:
            raise DataError(
                f"{path}: unsupported file type '{suffix}'; allowed: .json, .jsonl, .parquet, "
                "a directory saved by datasets, or a hub id"
            )
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:
            if builder == "json":
                raise DataError(_json_syntax_error(path)) from None
            raise DataError(f"{path}: unreadable {builder} file ({type(exc).__name__})") from None
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise DataError(f"{source}: no such file or directory, and not a hub dataset id of the form org/name")
    from harness.resolve import is_offline

    searched = f"searched {path.resolve()} and the datasets cache"
    if is_offline():
        raise DataError(f"{source}: not found locally and HF_HUB_OFFLINE=1; {searched}")
    try:
        return datasets.load_dataset(source, split="train")
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(f"{source}: could not load from the hub ({reason}); {searched}") from None


def _as_text(row: dict[str, Any], column: str, *, required: bool) -> str:
    if column not in row or row[column] is None:
        if required:
            raise ValueError(f"field '{column}': missing")
        return ""
    value = row[column]
    if not isinstance(value, str):
        raise ValueError(f"field '{column}': must be a string, got {type(value).__name__}")
    return value


def normalize_row(row: dict[str, Any], data_type: str) -> Record:
    """One source row as a Record, or ValueError naming the field and the problem."""
    if data_type in INSTRUCTION_FIELDS:
        mapping = INSTRUCTION_FIELDS[data_type]
        values = {ours: _as_text(row, theirs, required=ours not in OPTIONAL_FIELDS) for ours, theirs in mapping.items()}
        if not values["instruction"].strip():
            raise ValueError(f"field '{mapping['instruction']}': empty")
        if not values["output"].strip():
            raise ValueError(f"field '{mapping['output']}': empty output")
        return Record(instruction=values["instruction"], input=values["input"], output=values["output"])
    list_field, role_key, content_key = CONVERSATION_FIELDS[data_type]
    turns = row.get(list_field)
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"field '{list_field}': missing or not a non-empty list of turns")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"field '{list_field}[{index}]': must be an object")
        role = ROLES.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise ValueError(f"field '{list_field}[{index}].{role_key}': must be one of {', '.join(ROLES)}")
        content = _as_text(turn, content_key, required=True)
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ValueError(f"field '{list_field}': no non-empty assistant turn to learn from")
    return Record(messages=messages)


def load_rows(source: str, data_type: str, *, skip_invalid: bool = False, limit: int | None = None) -> LoadedRows:
    """Read and normalize rows; ``limit`` keeps the first N."""
    if data_type not in INSTRUCTION_FIELDS and data_type not in CONVERSATION_FIELDS:
        raise DataError(f"dataset.type: unknown type {data_type!r}")
    table = _load_table(os.path.expanduser(source))
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    if len(table) == 0:
        raise DataError(f"{source}: empty file (no rows)")
    records: list[Record] = []
    dropped: Counter[str] = Counter()
    for number, row in enumerate(table, 1):
        try:
            records.append(normalize_row(row, data_type))
        except ValueError as exc:
            if not skip_invalid:
                raise DataError(f"{source}: row {number}: {exc}") from None
            dropped[str(exc)] += 1
    if not records:
        raise DataError(f"{source}: every row was invalid ({sum(dropped.values())} dropped)")
    return LoadedRows(records, source, len(table), dropped)


def write_subset(source: str, first: int, output: str | Path) -> int:
    """Write the first N rows of any readable source as JSONL (the research document's subsets)."""
    table = _load_table(os.path.expanduser(source))
    count = min(first, len(table))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(output.name + ".partial")
    with staging.open("w", encoding="utf-8") as handle:
        for row in table.select(range(count)):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(staging, output)
    return count
