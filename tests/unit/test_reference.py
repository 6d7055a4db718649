"""Recorded reference losses (harness.reference): the tiny run re-run against tests/reference/tiny_lora.json,
the recordings in step with their configs, ``harness reference record``, and how drift is reported.

Tolerance 1e-5 relative per step for the tiny run: a repeat on one machine is bitwise equal, and the same
run with MKL and ATen forced from AVX-512 to AVX2 moved it by at most 7.0e-8."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.config import config_from_dict
from harness.reference import REFERENCES, compare, load_recording
from tests.helpers import RECORDINGS, check_against_recording


def test_tiny_lora_matches_its_recording():
    check_against_recording("tiny_lora")


@pytest.mark.parametrize("name", list(REFERENCES))
def test_every_reference_is_recorded_with_its_config_versions_and_tolerance(name):
    recording, config = load_recording(RECORDINGS / f"{name}.json")
    expected = config_from_dict(REFERENCES[name])
    assert config.to_dict() | {"output_dir": ""} == expected.to_dict() | {"output_dir": ""}, (
        f"harness.reference.REFERENCES[{name!r}] changed since it was recorded: run `harness reference record {name}`"
    )
    assert set(recording["versions"]) == {"torch", "transformers", "peft", "bitsandbytes"}
    assert 0 < recording["tolerance"]["relative"] <= 1e-4
    assert recording["repeat_max_relative"] <= recording["tolerance"]["relative"]
    assert 10 <= len(recording["losses"]) <= 20


def test_record_cli_writes_a_recording_a_rerun_matches(tmp_path, capsys):
    assert main(["reference", "record", "tiny_lora", "--out", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    written = json.loads((tmp_path / "tiny_lora.json").read_text())
    committed = json.loads((RECORDINGS / "tiny_lora.json").read_text())
    assert written["repeat_max_relative"] == 0.0  # two runs on one machine: bitwise equal
    assert compare(committed, written["losses"]).matches


def test_record_cli_refuses_an_unknown_reference(capsys):
    assert main(["reference", "record", "nope", "--out", "/nonexistent"]) == 2
    assert "nope: no such reference" in capsys.readouterr().err


def test_drift_names_the_worst_step_and_the_libraries_that_changed():
    recording = {
        "name": "r",
        "losses": [2.0, 1.5, 1.0],
        "versions": {"torch": "0.0.1", "transformers": "0.0.1", "peft": "0.0.1", "bitsandbytes": "0.0.1"},
        "tolerance": {"relative": 1e-5},
    }
    drift = compare(recording, [2.0, 1.5 * (1 + 3e-4), 1.0])
    print(drift.describe())
    assert not drift.matches and drift.worst_step == 2 and drift.max_relative == pytest.approx(3e-4)
    assert "DRIFTED" in drift.describe() and "torch 0.0.1 -> " in drift.describe()
    assert compare(recording, [2.0, 1.5 * (1 + 1e-6), 1.0]).matches
    assert not compare(recording, [2.0, 1.5]).matches  # a step missing
