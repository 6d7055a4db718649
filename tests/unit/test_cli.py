"""The CLI: one-line errors with exit code 2, and the resolved config printed on success."""

from __future__ import annotations

from pathlib import Path

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
