"""What the Trainer does with the folder it is told to write into, before any step: a previous run is
neither overwritten nor resumed by accident, a folder of other files is not written into, --overwrite
removes only what harness wrote, and --resume finds the newest complete checkpoint. Folders are built
by hand (a checkpoint is complete when its manifest is there), so no model is trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checkpoint import MANIFEST
from harness.errors import CheckpointError, TrainingError
from harness.training import METRICS_FILE, find_resume_checkpoint, prepare_output_dir, refuse_foreign_folder

pytestmark = pytest.mark.unit


def checkpoint(folder: Path, step: int, *, complete: bool = True) -> Path:
    directory = folder / f"checkpoint-{step:06d}"
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        (directory / MANIFEST).write_text("{}")
    return directory


def test_a_missing_or_empty_folder_is_ready(tmp_path):
    prepare_output_dir(tmp_path / "absent", resuming=False, overwrite=False)
    (tmp_path / "empty").mkdir()
    prepare_output_dir(tmp_path / "empty", resuming=False, overwrite=False)


@pytest.mark.parametrize("left", ["metrics only", "checkpoint only", "both"])
def test_a_previous_run_is_refused_in_one_line_naming_both_ways_on(tmp_path, left):
    if left != "checkpoint only":
        (tmp_path / METRICS_FILE).write_text('{"step": 1}\n')
    if left != "metrics only":
        checkpoint(tmp_path, 5)
    with pytest.raises(TrainingError) as raised:
        prepare_output_dir(tmp_path, resuming=False, overwrite=False)
    assert str(raised.value) == (
        f"{tmp_path}: holds a previous run (checkpoints or {METRICS_FILE}); "
        "pass --resume to continue it or --overwrite to replace it"
    )


def test_resuming_keeps_the_previous_run_as_it_is(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1}\n')
    kept = checkpoint(tmp_path, 5)
    prepare_output_dir(tmp_path, resuming=True, overwrite=False)
    assert (tmp_path / METRICS_FILE).read_text() == '{"step": 1}\n' and (kept / MANIFEST).is_file()


def test_overwrite_removes_only_what_harness_wrote(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1}\n')
    checkpoint(tmp_path, 5)
    checkpoint(tmp_path, 10, complete=False)  # a save that was interrupted
    (tmp_path / "notes").mkdir()  # the user's folder
    (tmp_path / "checkpoint-notes.txt").write_text("the user's file, not a folder")
    prepare_output_dir(tmp_path, resuming=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-notes.txt", "notes"]


def test_overwrite_without_a_metrics_file_removes_the_checkpoints(tmp_path):
    checkpoint(tmp_path, 5)
    prepare_output_dir(tmp_path, resuming=False, overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_checkpoint_alone_is_not_a_previous_run_but_is_not_written_over(tmp_path):
    checkpoint(tmp_path, 5, complete=False)
    with pytest.raises(TrainingError, match="exists and holds other files"):
        prepare_output_dir(tmp_path, resuming=False, overwrite=False)


def test_a_folder_of_other_files_is_refused_naming_the_first_three(tmp_path):
    for name in ("d.txt", "b.txt", "a.txt", "c.txt", ".hidden"):
        (tmp_path / name).write_text("x")
    with pytest.raises(TrainingError) as raised:
        prepare_output_dir(tmp_path, resuming=False, overwrite=False)
    assert str(raised.value) == (
        f"{tmp_path}: exists and holds other files (a.txt, b.txt, c.txt, ...); "
        "choose an empty folder or pass --overwrite"
    )


def test_a_folder_of_three_other_files_names_them_all(tmp_path):
    for name in ("b.txt", "a.txt", "c.txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(TrainingError, match=r"\(a\.txt, b\.txt, c\.txt\); "):
        refuse_foreign_folder(tmp_path, overwrite=False)


def test_hidden_files_alone_do_not_make_a_folder_foreign(tmp_path):
    (tmp_path / ".git").mkdir()
    prepare_output_dir(tmp_path, resuming=False, overwrite=False)


def test_overwrite_lets_a_folder_of_other_files_be_written_into_and_keeps_them(tmp_path):
    (tmp_path / "thesis.tex").write_text("x")
    prepare_output_dir(tmp_path, resuming=False, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_resume_takes_the_newest_complete_checkpoint(tmp_path):
    checkpoint(tmp_path, 5)
    newest = checkpoint(tmp_path, 20)
    checkpoint(tmp_path, 100, complete=False)
    checkpoint(tmp_path, 9)
    assert find_resume_checkpoint(tmp_path) == newest


def test_resume_without_a_complete_checkpoint_says_so(tmp_path):
    checkpoint(tmp_path, 5, complete=False)
    with pytest.raises(CheckpointError) as raised:
        find_resume_checkpoint(tmp_path)
    assert str(raised.value) == f"{tmp_path}: no complete checkpoint to resume from"
