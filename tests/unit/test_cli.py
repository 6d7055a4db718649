"""The CLI: one-line errors with exit code 2, and the resolved config printed on success."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from harness.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_check_config_prints_the_resolved_config(capsys):
    assert main(["check-config", str(CONFIGS / "smollm2_qlora_dev.yaml")]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out)
    assert resolved["lora"]["r"] == 8 and resolved["training"]["gradient_accumulation_steps"] == 1


def test_check_config_bad_value_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: {dropout: 1.5}\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {bad}: lora.dropout: must be a number in [0, 1), got 1.5\n"


def test_check_config_override(capsys):
    assert main(["check-config", str(CONFIGS / "smollm2_qlora_dev.yaml"), "--set", "lora.r=32"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["lora"]["r"] == 32


def test_fetch_prints_where_the_snapshot_is(tiny_llama, capsys):
    assert main(["fetch", "harness/tiny-random-llama"]) == 0
    out = capsys.readouterr().out
    assert str(tiny_llama.path) in out and "(random init)" in out
    assert "hidden 64, layers 2, heads 4, kv heads 2" in out


TINY_RUN = [
    "--set",
    "base_model=harness/tiny-random-llama",
    "--set",
    "dataset.num_examples=40",
    "--set",
    "dataset.max_length=320",
    "--set",
    "training.save_steps=2",
    "--set",
    "lora.r=4",
]


def test_train_leaves_a_loadable_adapter_and_refuses_to_overwrite(tmp_path, capsys, tiny_llama):
    from peft import PeftModel

    from harness.checkpoint import verify_checkpoint
    from harness.loading import load_model

    out = tmp_path / "run"
    args = [
        "train",
        str(CONFIGS / "smollm2_qlora_dev.yaml"),
        "--max-steps",
        "4",
        "--output-dir",
        str(out),
        "--set",
        "adapter=lora",
        "--set",
        "dataset.path=builtin:tasks",
        *TINY_RUN,
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"metrics -> {out / 'metrics.jsonl'}" in printed and "step 4/4 loss" in printed
    assert "checkpoints: checkpoint-000002, checkpoint-000004" in printed
    verify_checkpoint(out)
    PeftModel.from_pretrained(load_model(tiny_llama.path), str(out))
    assert main(args) == 2
    assert "holds a previous run (checkpoints or metrics.jsonl); pass --resume" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_train_bad_override_is_one_line(capsys):
    assert main(["train", str(CONFIGS / "smollm2_qlora_dev.yaml"), "--set", "training.lr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set training.lr=1: training.lr: unknown key (did you mean 'training.")
    assert err.count("\n") == 1


def test_data_preview_marks_targets_and_counts(capsys, tiny_llama):
    assert main(["data", "preview", "-n", "1", *TINY_RUN]) == 0
    out = capsys.readouterr().out
    assert "### Response:\n[[" in out and "]]" in out
    assert "rows read: 40; dropped: 0" in out and "target tokens:" in out


def test_data_preview_bad_data_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": 3}\n')
    assert (
        main(["data", "preview", "--set", f"dataset.path={bad}", "--set", "base_model=harness/tiny-random-llama"]) == 2
    )
    assert capsys.readouterr().err == f"error: {bad}: row 1: field 'output': must be a string, got int\n"


def test_data_subset(tmp_path, capsys):
    source = tmp_path / "all.jsonl"
    source.write_text("".join(f'{{"instruction": "i{n}", "output": "o{n}"}}\n' for n in range(10)))
    out = tmp_path / "first3.jsonl"
    assert main(["data", "subset", str(source), "--first", "3", "-o", str(out)]) == 0
    assert out.read_text().count("\n") == 3 and "wrote 3 rows" in capsys.readouterr().out


def test_train_refuses_a_folder_of_other_files(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    args = ["train", str(CONFIGS / "smollm2_qlora_dev.yaml"), "--output-dir", str(folder), *TINY_RUN]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: {folder}: exists and holds other files (thesis.tex); choose an empty folder or pass --overwrite\n"
    )
    assert (folder / "thesis.tex").read_text() == "precious"


def test_validate_refuses_an_out_folder_of_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep")
    assert main(["validate", "--out", str(tmp_path), *TINY_RUN]) == 2
    assert "exists and holds other files (notes.txt)" in capsys.readouterr().err


def test_skip_nonfinite_flag_sets_the_config_key(capsys):
    from harness.cli import _load_run_config, build_parser

    args = build_parser().parse_args(["train", str(CONFIGS / "smollm2_qlora_dev.yaml"), "--skip-nonfinite", "3"])
    assert _load_run_config(args).training.skip_nonfinite == 3


def tiny_train_args(out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(CONFIGS / "smollm2_qlora_dev.yaml"),
        "--output-dir",
        str(out),
        "--set",
        "adapter=lora",
        "--set",
        "dataset.path=builtin:tasks",
        *TINY_RUN,
        *extra,
    ]


def test_a_training_failure_exits_3_and_bad_input_still_exits_2(tmp_path, capsys, tiny_llama):
    # lora.alpha / r = 2.5e37 scales the adapter's output past float32: the first gradient is inf.
    assert main(tiny_train_args(tmp_path / "inf", "--max-steps", "2", "--set", "lora.alpha=1e38")) == 3
    assert capsys.readouterr().err == "error: step 1: gradient norm is inf; stopped, no checkpoint was saved yet\n"
    assert main(tiny_train_args(tmp_path / "bad", "--set", "lora.alpha=x")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set lora.alpha=x: lora.alpha: ") and err.count("\n") == 1


def test_help_lists_the_exit_codes(capsys):
    import pytest

    from harness.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "exit codes:\n  0 " in help_text
    for code in ("1", "2", "3", "130", "143"):
        assert f"\n  {code} " in help_text


# -- the resume hint: a command that parses back to the same run, and runs


def parse_hint(hint: str, launcher: list[str]):
    from harness.cli import build_parser

    words = shlex.split(hint)
    assert words[: len(launcher)] == launcher, words
    return build_parser().parse_args(words[len(launcher) :])


def test_resume_hint_under_torchrun_keeps_every_option(tmp_path):
    from harness.cli import build_parser, resume_command

    argv = [
        "-v",
        "train",
        "my config.yaml",
        "--resume",  # the bare flag (auto): a run resumed and interrupted again
        "--max-steps=60",
        "--skip-nonfinite",
        "2",
        "--allow-pickle",
        "--set",
        "lora.r=8",
        "--set",
        "training.learning_rate=1e-4",
        "--output-dir",
        "runs/a b",
        "--overwrite",
    ]
    args = build_parser().parse_args(argv)
    checkpoint = tmp_path / "runs" / "a b" / "checkpoint-000060"
    hint = resume_command(args, checkpoint, environ={"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, argv0="x")
    back = parse_hint(hint, ["torchrun", "--nproc_per_node=2", "--nnodes=2", "-m", "harness"])
    assert back.resume == str(checkpoint) and not back.overwrite
    assert {**vars(back), "resume": None, "overwrite": None} == {**vars(args), "resume": None, "overwrite": None}
    # Every train option is carried (or deliberately dropped): a new one must be added to resume_command.
    assert set(vars(args)) == {
        "verbose",
        "command",
        "handler",
        "config",
        "max_steps",
        "skip_nonfinite",
        "allow_pickle",
        "set",
        "output_dir",
        "resume",
        "overwrite",
    }


def test_resume_hint_launchers():
    import sys

    from harness.cli import build_parser, resume_command

    args = build_parser().parse_args(["train", "cfg.yaml"])
    single_node = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    assert resume_command(args, Path("ck"), environ=single_node, argv0="x") == (
        "torchrun --nproc_per_node=2 -m harness train cfg.yaml --resume ck"
    )
    console_script = resume_command(args, Path("ck"), environ={}, argv0="/venv/bin/harness")
    assert console_script == "harness train cfg.yaml --resume ck"
    module = resume_command(args, None, environ={}, argv0="/src/harness/__main__.py")
    assert shlex.split(module) == [sys.executable, "-m", "harness", "train", "cfg.yaml", "--resume"]
    assert parse_hint(module, [sys.executable, "-m", "harness"]).resume == "auto"


def test_interrupted_train_prints_a_resume_command_that_runs(tmp_path, capsys, monkeypatch, tiny_llama):
    import contextlib
    import signal

    from harness import cli

    @contextlib.contextmanager
    def stop_after_the_first_step(trainer):
        trainer.request_stop(signal.SIGINT)  # what the SIGINT handler does
        yield

    monkeypatch.setattr(cli, "_stop_on_signals", stop_after_the_first_step)
    monkeypatch.setattr("sys.argv", ["harness"])
    out = tmp_path / "run dir"
    assert main(tiny_train_args(out, "--max-steps", "3", "--set", "training.dtype=float32")) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGINT after step 1: checkpoint ")
    hint = last.split("; resume with: ", 1)[1]
    assert shlex.split(hint)[-2:] == ["--resume", str(out / "checkpoint-000001")]
    monkeypatch.undo()
    assert parse_hint(hint, ["harness"]).set[-1] == "training.dtype=float32"
    assert main(shlex.split(hint)[1:]) == 0
    printed = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-000001'}" in printed and "step 3/3 loss" in printed


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["training.dtype=float16"], "error: training.dtype: float16 training needs loss scaling"),
        (
            ["training.dtype=bfloat16", "adapter=none"],
            "error: training.dtype: a full fine-tune (adapter: none) in bfloat16",
        ),
    ],
)
def test_unsafe_training_precision_is_refused_with_one_line(tmp_path, capsys, tiny_llama, sets, message):
    args = tiny_train_args(tmp_path, *[item for s in sets for item in ("--set", s)])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_bfloat16_lora_is_allowed():
    import torch

    from harness.loading import check_training_precision

    check_training_precision(torch.bfloat16, "lora")
    check_training_precision(torch.float32, "none")
