"""Data parallel on CPU: two gloo ranks under torchrun train exactly like one process with twice the
micro batch; only rank 0 writes; ranks that disagree on the config stop with a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_CONFIG = """\
base_model: harness/tiny-random-llama
adapter: lora
output_dir: out
lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj, o_proj]}}
dataset: {{path: "builtin:tasks", max_length: 320, num_examples: 120}}
training: {{batch_size: {batch}, max_steps: 8, save_steps: 4, logging_steps: 1, learning_rate: 0.01,
           gradient_accumulation_steps: 2, dtype: float32, warmup_ratio: 0.0}}
"""


def run(args, cwd, env=None):
    merged = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(args, cwd=cwd, env=merged, capture_output=True, text=True, timeout=600)


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def losses(folder: Path) -> list[float]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if line["type"] == "train"]


def write_config(folder: Path, batch: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.yaml").write_text(RUN_CONFIG.format(batch=batch))
    return folder / "run.yaml"


@pytest.fixture(scope="module")
def tiny_ready(tiny_llama):
    return tiny_llama


def test_two_gloo_ranks_match_one_process_with_twice_the_micro_batch(tmp_path, tiny_ready):
    single = write_config(tmp_path / "single", batch=4)
    done = run([sys.executable, "-m", "harness", "train", str(single)], ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    double = write_config(tmp_path / "ddp", batch=2)
    done = run(
        torchrun(
            "-m",
            "harness",
            "train",
            str(double),
        ),
        ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training 8 steps") == 1 and "x 2 ranks" in done.stdout  # rank 0 alone prints
    one, two = losses(tmp_path / "single" / "out"), losses(tmp_path / "ddp" / "out")
    worst = max(abs(a - b) / a for a, b in zip(one, two, strict=True))
    print(f"losses, 1 process x batch 4: {[round(x, 5) for x in one]}")
    print(f"losses, 2 ranks x batch 2:   {[round(x, 5) for x in two]}  (max relative difference {worst:.1e})")
    assert len(one) == len(two) == 8
    assert worst < 1e-4
    checkpoints = sorted(p.name for p in (tmp_path / "ddp" / "out").iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-000004", "checkpoint-000008"]
    assert (tmp_path / "ddp" / "out" / "adapter_model.safetensors").is_file()


def test_ranks_that_disagree_on_the_config_stop(tmp_path, tiny_ready):
    config = write_config(tmp_path / "mismatch", batch=2)
    script = (
        "import os, sys; from harness.cli import main; "
        "lr = '0.01' if os.environ['RANK'] == '0' else '0.02'; "
        "sys.exit(main(['train', sys.argv[1], '--set', 'training.learning_rate=' + lr]))"
    )
    done = run(
        torchrun(
            "--no-python",
            sys.executable,
            "-c",
            script,
            str(config),
        ),
        ROOT,
    )
    assert done.returncode != 0
    assert "error: ranks disagree on the config: rank 1 differs from rank 0" in done.stderr


def test_validate_under_torchrun_trains_on_both_ranks_and_reports_once(tmp_path, tiny_ready):
    config = write_config(tmp_path / "validate", batch=2)
    out = tmp_path / "report"
    done = run(
        torchrun(
            "-m",
            "harness",
            "validate",
            str(config),
            "--out",
            str(out),
            "--set",
            "validation.min_steps=8",
            "--set",
            "validation.eval_examples=4",
            "--set",
            "training.epochs=2",
        ),
        ROOT,
    )
    assert done.stdout.count("validating ") == 1 and "on 2 ranks" in done.stdout, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    status = {c["id"]: c["status"] for c in report["criteria"]}
    # Generation and forgetting mean nothing for a random-init model; the distributed mechanics must pass.
    assert status["generation"] == status["forgetting_guard"] == "SKIPPED"
    for criterion in (
        "training_step",
        "lr_schedule",
        "epochs_complete",
        "checkpoint_saves",
        "checkpoint_loads",
        "adapter_config",
        "gradient_norms",
    ):
        assert status[criterion] == "PASS", (criterion, report["criteria"])
    assert report["facts"]["world_size"] == 2
    assert report["facts"]["plan"]["total_steps"] == 8
