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


def per_step(folder: Path, key: str = "loss") -> list[float]:
    """One metric of every training step, from the run's metrics log."""
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [line[key] for line in lines if line["type"] == "train"]


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
    one, two = per_step(tmp_path / "single" / "out"), per_step(tmp_path / "ddp" / "out")
    worst = max(abs(a - b) / a for a, b in zip(one, two, strict=True))
    print(f"losses, 1 process x batch 4: {[round(x, 5) for x in one]}")
    print(f"losses, 2 ranks x batch 2:   {[round(x, 5) for x in two]}  (max relative difference {worst:.1e})")
    assert len(one) == len(two) == 8
    assert worst < 1e-4
    # AdamW is nearly blind to a gradient's scale; the norm is not (a wrong DDP scaling shows here).
    norms = zip(per_step(tmp_path / "single" / "out", "grad_norm"), per_step(tmp_path / "ddp" / "out", "grad_norm"))
    worst_norm = max(abs(a - b) / a for a, b in norms)
    print(f"gradient norms: max relative difference {worst_norm:.1e}")
    assert worst_norm < 1e-4
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


FAULT = """\
import os, sys, time, torch
import harness.training as training
from harness.cli import main
rank, target, fault_file = os.environ["RANK"], sys.argv[2], sys.argv[3]
calls = []
real_loss, real_save = training.loss_sum_and_count, training.save_checkpoint
def fail(error):
    open(fault_file, "w").write(repr(time.time()))
    raise error
def loss(*args, **kwargs):
    calls.append(1)
    if target == "oom" and rank == "1" and len(calls) == 3:  # step 2, second micro batch
        fail(torch.OutOfMemoryError("simulated"))
    return real_loss(*args, **kwargs)
def save(*args, **kwargs):
    if target == "disk" and rank == "0":
        fail(OSError(28, "No space left on device"))
    return real_save(*args, **kwargs)
training.loss_sum_and_count, training.save_checkpoint = loss, save
sys.exit(main(["train", sys.argv[1], "--set", "training.max_steps=4", "--set", "training.save_steps=2"]))
"""


def two_ranks(*command: str) -> list[tuple[int, float, str]]:
    """Run ``command`` as ranks 0 and 1 of a gloo group, started as torchrun starts them but without
    its agent (which would stop one rank when the other fails): per rank its exit code, the time it
    ended and its stderr."""
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = []
    for rank in (0, 1):
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
        env.update(MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        ranks.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
    ended: dict[int, float] = {}
    deadline = time.time() + 120
    while len(ended) < 2 and time.time() < deadline:
        for rank, process in enumerate(ranks):
            if rank not in ended and process.poll() is not None:
                ended[rank] = time.time()
        time.sleep(0.05)
    for process in ranks:
        process.kill()
    outcomes = []
    for rank, process in enumerate(ranks):
        stderr = process.communicate()[1]
        assert rank in ended, f"rank {rank} still running 120 s after the start: {stderr[-2000:]}"
        outcomes.append((process.returncode, ended[rank], stderr))
    return outcomes


def launch_two_ranks_failing(tmp_path: Path, fault: str) -> list[tuple[int, float, str]]:
    """Per rank its exit code, seconds from the injected fault to its exit, and its stderr."""
    config = write_config(tmp_path / fault, batch=2)
    fault_file = tmp_path / f"{fault}.time"
    outcomes = two_ranks(sys.executable, "-c", FAULT, str(config), fault, str(fault_file))
    faulted = float(fault_file.read_text())
    timings = [
        f"rank {rank} exit {code} {end - faulted:.2f} s after the fault" for rank, (code, end, _) in enumerate(outcomes)
    ]
    print(f"{fault}: " + ", ".join(timings))
    return [(code, end - faulted, stderr) for code, end, stderr in outcomes]


def test_a_rank_out_of_memory_stops_every_rank_at_once_with_its_code(tmp_path, tiny_ready):
    (code0, seconds0, err0), (code1, seconds1, err1) = launch_two_ranks_failing(tmp_path, "oom")
    assert code1 == 3 and "error: step 2: CUDA out of memory" in err1, err1[-2000:]
    # Rank 0 was waiting for rank 1's gradients in an all-reduce: without the failure watch, gloo
    # ends it with a "connection closed" traceback and exit 1 once rank 1 is gone; NCCL would wait.
    assert code0 == 3 and "error: rank 1 failed: step 2: CUDA out of memory" in err0, err0[-2000:]
    assert max(seconds0, seconds1) < 10


def test_a_full_disk_at_a_save_stops_every_rank_at_once_with_its_code(tmp_path, tiny_ready):
    (code0, seconds0, err0), (code1, seconds1, err1) = launch_two_ranks_failing(tmp_path, "disk")
    assert code0 == 3 and "No space left on device" in err0.splitlines()[-1], err0[-2000:]
    # Rank 1 was waiting at the barrier after the save.
    assert code1 == 3 and "error: rank 0 failed: step 2: cannot write" in err1, err1[-2000:]
    assert max(seconds0, seconds1) < 10


def test_ranks_draw_their_own_dropout_and_resume_restores_each_ranks_generator(tmp_path, tiny_ready):
    import shutil

    import torch

    dropout = ["--set", "lora.dropout=0.1", "--set", "training.max_steps=4", "--set", "training.save_steps=2"]
    straight = write_config(tmp_path / "straight", batch=2)
    for code, _, stderr in two_ranks(sys.executable, "-m", "harness", "train", str(straight), *dropout):
        assert code == 0, stderr[-3000:]
    checkpoint = tmp_path / "straight" / "out" / "checkpoint-000002"
    rng = torch.load(checkpoint / "training_state.pt", weights_only=True)["rng"]["per_rank"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"]), "ranks share one dropout stream"
    resumed = write_config(tmp_path / "resumed", batch=2)
    copy = shutil.copytree(checkpoint, tmp_path / "resumed" / "out" / checkpoint.name)
    for code, _, stderr in two_ranks(
        sys.executable, "-m", "harness", "train", str(resumed), *dropout, "--resume", str(copy)
    ):
        assert code == 0, stderr[-3000:]
    whole, tail = per_step(tmp_path / "straight" / "out"), per_step(tmp_path / "resumed" / "out")
    print(f"losses straight: {whole}\nlosses resumed at step 2: {tail}")
    assert tail == whole[2:]


STOP_ON_RANK_1 = """\
import os, signal, sys
import harness.training as training
from harness.cli import main
real, calls = training.training_step, []
def step(*args, **kwargs):
    calls.append(1)
    outcome = real(*args, **kwargs)
    if os.environ["RANK"] == "1" and len(calls) == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # as if the scheduler had signalled this rank alone
    return outcome
training.training_step = step
sys.exit(main(["train", sys.argv[1]]))
"""


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path, tiny_ready):
    config = write_config(tmp_path / "stop", batch=2)
    outcomes = two_ranks(sys.executable, "-c", STOP_ON_RANK_1, str(config))
    assert [code for code, _, _ in outcomes] == [143, 143], [stderr[-2000:] for _, _, stderr in outcomes]
    assert "interrupted by SIGTERM after step 2" in outcomes[0][2]  # rank 0, which never got the signal, says so
    out = tmp_path / "stop" / "out"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-000002"]
    assert len(per_step(out)) == 2
