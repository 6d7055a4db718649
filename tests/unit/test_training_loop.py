"""The Trainer's loop on the tiny Llama: it trains exactly the micro batches the data layer gives for
(seed, epoch), from the first one of epoch 0, in order, across epochs; its result states the plan it
ran; its progress bar counts from the resumed step; and a failure after a resume names the
checkpoint the run resumed from as the last good one."""

from __future__ import annotations

import math

import pytest
import torch

import harness.training
from harness.data.batching import epoch_batches
from harness.data.formatting import pad_token_id
from harness.errors import TrainingError
from tests.unit.test_training import built, tiny_config

pytestmark = pytest.mark.unit


def expected_steps(run, epochs: int) -> list[tuple[int, int, int]]:
    """(epoch, tokens, target tokens) of every optimizer step, from the data layer's own batches."""
    training = run.config.training
    out = []
    for epoch in range(epochs):
        batches = epoch_batches(
            run.data.train,
            batch_size=training.batch_size,
            max_length=run.config.dataset.max_length,
            pad_id=pad_token_id(run.tokenizer),
            seed=run.config.seed,
            epoch=epoch,
        )
        for start in range(0, len(batches), training.gradient_accumulation_steps):
            group = batches[start : start + training.gradient_accumulation_steps]
            out.append((epoch, sum(b.num_tokens for b in group), sum(b.num_targets for b in group)))
    return out


def test_the_trainer_trains_the_data_layers_batches_in_order_over_two_epochs(tmp_path):
    run = built(
        tiny_config(
            tmp_path,
            "dataset.num_examples=40",
            "training.max_steps=null",
            "training.epochs=2",
            "training.gradient_accumulation_steps=2",
            "training.save_steps=1000",
        )
    )
    result = run.trainer().train()
    expected = expected_steps(run, 2)
    assert [(r.epoch, r.tokens, r.target_tokens) for r in result.history] == expected
    assert len({tokens for _, tokens, _ in expected}) > 2  # the order is visible in the counts
    assert result.epochs_completed == 2


def test_the_result_states_the_plan_it_ran(tmp_path):
    run = built(tiny_config(tmp_path, "dataset.num_examples=40", "training.max_steps=6"))
    trainer = run.trainer()
    result = trainer.train()
    micro_batches = math.ceil(len(run.data.train) / 4)
    assert (result.output_dir, result.total_steps, result.warmup_steps) == (tmp_path / "out", 6, 2)
    assert (result.steps_per_epoch, result.epochs_planned) == (micro_batches, 1)
    assert [r.step for r in result.history] == [1, 2, 3, 4, 5, 6]


def test_the_progress_bar_counts_to_the_total_from_the_resumed_step(tmp_path, monkeypatch):
    bars = []
    real = harness.training._progress

    def recording(total, initial, enabled=True):
        bars.append((total, initial, enabled))
        return real(total, initial, enabled)

    monkeypatch.setattr(harness.training, "_progress", recording)
    checkpoint = built(tiny_config(tmp_path)).trainer().train().checkpoints[0]
    built(tiny_config(tmp_path)).trainer(output_dir=str(tmp_path / "again")).train(resume_from=checkpoint)
    assert bars == [(8, 0, True), (8, 4, True)]


def test_a_failure_after_a_resume_names_the_resumed_checkpoint_as_the_last_good_one(tmp_path):
    checkpoint = built(tiny_config(tmp_path)).trainer().train().checkpoints[0]  # step 4 of 8
    run = built(tiny_config(tmp_path))

    def poison(record):
        if record.step == 5:
            with torch.no_grad():
                next(p for p in run.model.parameters() if p.requires_grad).fill_(float("nan"))

    with pytest.raises(TrainingError) as caught:
        run.trainer(output_dir=str(tmp_path / "again"), on_step=poison).train(resume_from=checkpoint)
    assert str(caught.value) == f"step 6: loss is nan; stopped, last good checkpoint: {checkpoint}"
