"""The embedded default validation through TRL's SFTTrainer (``harness validate --engine trl``): the
same criteria, the same thresholds, all PASS, judged on what TRL's run produced (its log history, the
adapter its save_model wrote, reloaded with plain PEFT, its model's answers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="the trl extra is not installed (pip install -e '.[trl]')")

ROOT = Path(__file__).resolve().parents[2]


def test_default_validation_through_trl_passes(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "harness", "validate", "--engine", "trl", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["config"]["training"]["engine"] == "trl" and report["environment"]["packages"]["trl"]
    assert report["summary"] == {"PASS": 15, "FAIL": 0, "SKIPPED": 0, "exit_code": 0, "result": "PASS"}
    assert report["training"] == {"steps": 102, "epochs_completed": 2, "evals": []}
    assert "trained by TRL's SFTTrainer" in (tmp_path / "report.md").read_text()
    # TRL's own files: the adapter it saved is the one reloaded and judged.
    saved = next(c for c in report["criteria"] if c["id"] == "checkpoint_saves")
    assert saved["detail"] == str(tmp_path / "trl" / "final")
