"""When a run dies: signals stop after the current step with a checkpoint and a resume hint, the
resumed run ends with the same weights, and SIGKILL at any moment of a save leaves a loadable
checkpoint. Real child processes on the tiny Llama."""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.checkpoint import list_checkpoints, verify_checkpoint

ROOT = Path(__file__).resolve().parents[2]
RUN_CONFIG = """\
base_model: harness/tiny-random-llama
adapter: lora
output_dir: out
lora: {r: 4, alpha: 8, dropout: 0.1, target_modules: [q_proj, v_proj]}
dataset: {path: "builtin:tasks", max_length: 320, num_examples: 240}
training: {batch_size: 4, max_steps: 30, save_steps: 100, logging_steps: 1, learning_rate: 0.003, dtype: float32}
"""


def write_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(RUN_CONFIG)
    return path


def harness(*args, **kwargs):
    return run_command([sys.executable, "-m", "harness", *args], **kwargs)


def run_command(words, **kwargs):
    return subprocess.Popen(
        words,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        **kwargs,
    )


def wait_for_steps(metrics: Path, steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and metrics.read_text().count('"type": "train"') >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"{metrics} never reached {steps} steps")


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama):
    config = write_config(tmp_path_factory.mktemp("straight"))
    done = harness("train", str(config))
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-2000:]
    return adapter_weights(config.parent / "out")


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_signal_checkpoints_and_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted, signum, exit_code):
    config = write_config(tmp_path)
    out = config.parent / "out"
    child = harness("train", str(config))
    wait_for_steps(out / "metrics.jsonl", 5)
    child.send_signal(signum)
    _, err = child.communicate(timeout=300)
    assert child.returncode == exit_code, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {signal.Signals(signum).name} after step ")
    checkpoints = list_checkpoints(out)
    assert len(checkpoints) == 1
    verify_checkpoint(checkpoints[0])
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 5 <= stopped_at < 30

    # The hint is the command to run, as printed.
    hint = shlex.split(last.split("; resume with: ", 1)[1])
    assert hint == [sys.executable, "-m", "harness", "train", str(config), "--resume", str(checkpoints[0])]
    resumed = run_command(hint)
    stdout, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert f"resuming from {checkpoints[0]}" in stdout
    weights = adapter_weights(out)
    max_diff = max(float((weights[k] - uninterrupted[k]).abs().max()) for k in weights)
    print(
        f"{signal.Signals(signum).name} after step {stopped_at}, resumed: max |w - w(uninterrupted)| = {max_diff:.1e}"
    )
    # Same seed, data order restored from (seed, epoch, position), RNG restored: CPU float32 is exact.
    assert max_diff <= 1e-6


# One process imports torch and builds the model once; each attempt is a fork of it that saves in a
# loop until the test SIGKILLs it (10 fresh interpreters cost ~50 s of imports). One intra-op thread:
# a fork is only safe before an OpenMP pool exists.
SAVE_LOOP = """
import os, sys, torch
from pathlib import Path
torch.set_num_threads(1)
from harness.checkpoint import save_checkpoint
from harness.config import load_config
from harness.recipe import prepare_run
run = prepare_run(load_config(None, ["base_model=harness/tiny-random-llama", "lora.r=4"]), with_data=False)
model = run.build()
for line in sys.stdin:
    out = Path(line.strip())
    pid = os.fork()
    if pid == 0:
        save_checkpoint(model, out / "checkpoint-000001")
        print("ready", os.getpid(), flush=True)
        step = 1
        while True:
            step += 1
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(0.01)
            save_checkpoint(model, out / f"checkpoint-{step:06d}")
    _, status = os.waitpid(pid, 0)
    print("killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9 else f"status {status}", flush=True)
"""


def test_sigkill_at_many_points_of_a_save_leaves_a_loadable_checkpoint(tmp_path, tiny_llama):
    from harness.checkpoint import load_adapter
    from harness.loading import load_model

    rng = random.Random(0)
    kills = 10
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVE_LOOP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    for attempt in range(kills):
        out = tmp_path / f"attempt{attempt}"
        saver.stdin.write(f"{out}\n")
        saver.stdin.flush()
        word, pid = saver.stdout.readline().split()
        assert word == "ready"
        time.sleep(rng.uniform(0.0, 0.6))
        os.kill(int(pid), signal.SIGKILL)
        assert saver.stdout.readline().strip() == "killed"
        complete = list_checkpoints(out)
        assert complete, "the first checkpoint must survive"
        for directory in complete:
            verify_checkpoint(directory)
        load_adapter(load_model(tiny_llama.path), complete[-1])
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
        print(f"kill {attempt + 1}: {len(complete)} complete checkpoints, staging leftovers {leftovers}")
    saver.stdin.close()
    assert saver.wait(timeout=60) == 0
