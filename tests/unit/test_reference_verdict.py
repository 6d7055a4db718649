"""The report's "reference losses" line: a run whose config has a recording in tests/reference says whether
its per-step losses match it, or at which step and by how much they drifted; any other config says it
has no reference. Judged against the committed tiny_lora recording and against hand-written losses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from harness.config import config_from_dict
from harness.reference import load_recording, reference_verdict, stack_versions, verdict
from harness.report import build_report, markdown
from harness.validation import Evidence, ValidationOutcome
from tests.helpers import RECORDINGS


def tiny():
    return load_recording(RECORDINGS / "tiny_lora.json")


def test_the_recorded_losses_match_their_own_config():
    recording, config = tiny()
    line = reference_verdict(dataclasses.replace(config, output_dir="/elsewhere"), recording["losses"], RECORDINGS)
    print(line)
    assert line.startswith("match within 0.0e+00 (recording tiny_lora, tolerance 1e-05")


def test_a_drifted_run_names_the_first_step_beyond_the_tolerance_and_the_largest_difference():
    recording, config = tiny()
    losses = list(recording["losses"])
    losses[4] *= 1 + 2e-5
    losses[9] *= 1 - 5e-4
    losses[10] *= 1 + 3e-6  # within the tolerance: neither the first step nor the largest
    line = reference_verdict(config, losses, RECORDINGS)
    print(line)
    assert line.startswith("DRIFTED at step 5 by 2.0e-05 (max 5.0e-04) (recording tiny_lora, tolerance 1e-05")


def test_a_run_with_a_step_missing_has_drifted():
    recording, config = tiny()
    line = reference_verdict(config, recording["losses"][:-1], RECORDINGS)
    assert line.startswith(
        f"DRIFTED: {len(recording['losses']) - 1} steps, the recording has {len(recording['losses'])}"
    )


def test_another_config_has_no_reference(tmp_path):
    recording, config = tiny()
    other = dataclasses.replace(config, seed=config.seed + 1)
    assert reference_verdict(other, recording["losses"], RECORDINGS) == "no reference for this config"
    (tmp_path / "notes.json").write_text("[1, 2]")  # not a recording: skipped, not a traceback
    (tmp_path / "broken.json").write_text("{")
    assert reference_verdict(config, recording["losses"], tmp_path) == "no reference for this config"


def test_changed_libraries_are_named():
    recording = {
        "name": "r",
        "losses": [2.0, 1.0],
        "versions": stack_versions() | {"torch": "0.0.1"},
        "tolerance": {"relative": 1e-5},
    }
    line = verdict(recording, [2.0, 1.0])
    assert line == "match within 0.0e+00 (recording r, tolerance 1e-05; changed since recording: torch 0.0.1 -> " + (
        f"{stack_versions()['torch']})"
    )


def test_the_report_prints_the_line(tmp_path):
    config = config_from_dict(json.loads((RECORDINGS / "tiny_lora.json").read_text())["config"])
    evidence = Evidence(facts={"reference_losses": "DRIFTED at step 3 by 1.0e-03"})
    outcome = ValidationOutcome(config, Path(tmp_path), evidence, [])
    text = markdown(build_report(outcome), outcome)
    assert "- reference losses: DRIFTED at step 3 by 1.0e-03" in text.splitlines()
    quiet = ValidationOutcome(config, Path(tmp_path), Evidence(), [])
    assert "reference losses" not in markdown(build_report(quiet), quiet)
