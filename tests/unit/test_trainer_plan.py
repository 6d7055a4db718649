"""The Trainer's plan before any step: optimizer steps per epoch with accumulation, the step cap, the
epochs it spans, explicit warmup over the ratio, and axolotl's saves/evals per epoch, against literal
tables worked out by hand (transformers' Trainer rounds the same way: ceil(micro batches /
accumulation) steps an epoch); and the metrics log a resume rewinds. A stand-in linear model: neither
needs weights."""

from __future__ import annotations

import json

import pytest
import torch

from harness.config import load_config
from harness.data.formatting import Example
from harness.training import Trainer

NUM_EXAMPLES = 20


def plan(tmp_path, *sets: str) -> Trainer:
    config = load_config(None, [f"output_dir={tmp_path}", "training.dtype=float32", *sets])
    examples = [Example(list(range(1, 4 + i % 5)), list(range(1, 4 + i % 5))) for i in range(NUM_EXAMPLES)]
    return Trainer(
        torch.nn.Linear(2, 2),
        config,
        examples,
        [],
        pad_id=0,
        device=torch.device("cpu"),
        output_dir=tmp_path,
        base_model_id="org/model",
    )


@pytest.mark.parametrize(
    ("batch", "accumulation", "epochs", "max_steps", "per_epoch", "total", "epochs_planned"),
    [
        (4, 1, 2, None, 5, 10, 2),  # 5 micro batches
        (4, 2, 2, None, 3, 6, 2),  # ceil(5 / 2)
        (4, 3, 1, None, 2, 2, 1),  # ceil(5 / 3)
        (3, 2, 3, 7, 4, 7, 2),  # 7 micro batches (the last of 2), ceil(7 / 2) = 4; the cap ends in epoch 2
        (4, 1, 1, 12, 5, 12, 3),  # a cap beyond the configured epochs runs more of them
    ],
)
def test_steps_per_epoch_total_and_epochs(
    tmp_path, batch, accumulation, epochs, max_steps, per_epoch, total, epochs_planned
):
    trainer = plan(
        tmp_path,
        f"training.batch_size={batch}",
        f"training.gradient_accumulation_steps={accumulation}",
        f"training.epochs={epochs}",
        f"training.max_steps={'null' if max_steps is None else max_steps}",
    )
    assert (trainer.steps_per_epoch, trainer.total_steps, trainer.epochs_planned) == (per_epoch, total, epochs_planned)


@pytest.mark.parametrize(
    ("sets", "warmup"),
    [
        (["training.warmup_ratio=0.25"], 3),  # ceil(10 x 0.25)
        (["training.warmup_ratio=0.5", "training.warmup_steps=1"], 1),  # explicit steps win over the ratio
        (["training.warmup_ratio=0.5", "training.warmup_steps=0"], 0),
    ],
)
def test_explicit_warmup_steps_win_over_the_ratio(tmp_path, sets, warmup):
    trainer = plan(tmp_path, "training.batch_size=4", "training.epochs=2", *sets)
    assert trainer.total_steps == 10 and trainer.warmup_steps == warmup


@pytest.mark.parametrize(
    ("sets", "save_steps", "eval_steps"),
    [
        ([], 7, 9),  # the configured intervals
        (["training.saves_per_epoch=2"], 3, 9),  # ceil(5 / 2); evals keep theirs
        (["training.evals_per_epoch=3"], 7, 2),  # ceil(5 / 3); saves keep theirs
        (["training.saves_per_epoch=2", "training.evals_per_epoch=3"], 3, 2),
        (["training.saves_per_epoch=5", "training.evals_per_epoch=1"], 1, 5),
    ],
)
def test_saves_and_evals_per_epoch_become_step_intervals(tmp_path, sets, save_steps, eval_steps):
    trainer = plan(tmp_path, "training.batch_size=4", "training.save_steps=7", "training.eval_steps=9", *sets)
    assert trainer.steps_per_epoch == 5
    assert (trainer.save_steps, trainer.eval_steps) == (save_steps, eval_steps)


def test_the_trainer_keeps_the_base_model_id_and_starts_unsignalled(tmp_path):
    trainer = plan(tmp_path)
    assert trainer.base_model_id == "org/model" and trainer.stop_signal == 0


def test_a_resume_drops_the_logged_steps_past_its_checkpoint(tmp_path):
    """Steps after the checkpoint will be logged again; steps up to it, and lines without a step, stay."""
    records = [{"step": step, "loss": 1.0 / step} for step in range(1, 6)] + [{"note": "no step"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    plan(tmp_path)._truncate_metrics(3)
    kept = records[:3] + records[-1:]
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in kept)
