"""The pytest plugin is opt-in and works in someone else's project: fixtures, markers and --runslow,
beside a conftest that defines its own --runslow, and nothing at all for a project that does not ask."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PLUGIN = "harness.pytest_plugin"

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

# The pattern pytest's documentation teaches: the project's own --runslow and "slow" marker.
OWN_RUNSLOW_CONFTEST = """
import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: mark test as slow to run")
    config.addinivalue_line("markers", "cpu: this project's own meaning")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="need --runslow option to run"))
"""

OWN_RUNSLOW_TESTS = """
import sys

import pytest


def test_configure_imported_no_model_library():
    assert "transformers" not in sys.modules and "torch" not in sys.modules


@pytest.mark.slow
def test_slow():
    pass


@pytest.mark.cpu
def test_marked_cpu():
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
    default = run_pytest(tmp_path, "-p", PLUGIN, "-rs")
    assert default.returncode == 0, default.stdout[-2000:]
    assert "1 passed, 2 skipped" in default.stdout
    assert "needs --runslow" in default.stdout and "needs a CUDA GPU" in default.stdout
    slow = run_pytest(tmp_path, "-p", PLUGIN, "--runslow")
    assert "2 passed, 1 skipped" in slow.stdout, slow.stdout[-2000:]
    assert "time per tier:" in slow.stdout


@pytest.mark.parametrize("requested", ["not asked", "-p", "pytest_plugins"])
def test_a_project_with_its_own_runslow(tmp_path, requested):
    conftest = OWN_RUNSLOW_CONFTEST + (f"\npytest_plugins = [{PLUGIN!r}]\n" if requested == "pytest_plugins" else "")
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_own.py").write_text(OWN_RUNSLOW_TESTS)
    flags = ["-p", PLUGIN] if requested == "-p" else []
    default = run_pytest(tmp_path, *flags, "-rs")
    slow = run_pytest(tmp_path, *flags, "--runslow")
    assert default.returncode == 0, default.stdout[-2000:] + default.stderr[-2000:]
    assert slow.returncode == 0 and "3 passed" in slow.stdout, slow.stdout[-2000:] + slow.stderr[-2000:]
    assert "need --runslow option to run" in default.stdout
    if requested == "not asked":
        # No markers, skips, summary or fixtures of the plugin: the cpu-marked test simply runs.
        assert "2 passed, 1 skipped" in default.stdout and "time per tier" not in default.stdout
    else:
        assert "1 passed, 2 skipped" in default.stdout and "needs --runslow (real weights" in default.stdout


def test_nothing_of_the_plugin_reaches_a_project_that_does_not_ask(tmp_path):
    (tmp_path / "test_foreign.py").write_text(FOREIGN_TESTS)
    listed = run_pytest(tmp_path, "--markers", "--fixtures")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "real SmolLM2 weights" not in listed.stdout and "tiny_llama" not in listed.stdout
    done = run_pytest(tmp_path, "--runslow")
    assert done.returncode == 4 and "unrecognized arguments: --runslow" in done.stderr, done.stderr[-2000:]
    strict = run_pytest(tmp_path)
    assert "'cpu' not found in `markers` configuration option" in strict.stdout, strict.stdout[-2000:]
