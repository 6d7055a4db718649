"""The pytest plugin works in someone else's project: fixtures, markers and --runslow."""

from __future__ import annotations

import os
import subprocess
import sys

FOREIGN_TESTS = """
import pytest


def test_tiny_llama_fixture(tiny_llama, tiny_tokenizer):
    assert tiny_llama.random_init
    assert tiny_tokenizer.decode(tiny_tokenizer("hi", add_special_tokens=False)["input_ids"]) == "hi"


@pytest.mark.cpu
def test_needs_runslow():
    pass


@pytest.mark.cuda
def test_needs_a_gpu():
    pass
"""


def run_pytest(project, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--strict-markers", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plugin_in_a_foreign_project(tmp_path):
    (tmp_path / "test_foreign.py").write_text(FOREIGN_TESTS)
    default = run_pytest(tmp_path, "-rs")
    assert default.returncode == 0, default.stdout[-2000:]
    assert "1 passed, 2 skipped" in default.stdout
    assert "needs --runslow" in default.stdout and "needs a CUDA GPU" in default.stdout
    slow = run_pytest(tmp_path, "--runslow")
    assert "2 passed, 1 skipped" in slow.stdout, slow.stdout[-2000:]
    assert "time per tier:" in slow.stdout
