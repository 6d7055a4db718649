"""What a training run records, on the tiny Llama: every line of metrics.jsonl (train, eval,
epoch_end, skipped, error, interrupted) and the step records it mirrors; which batch follows a skipped
one; the skip budget's boundary; a stop request; and the out-of-memory message. Without these, a
wrong epoch number or a dropped eval line would only show in a report's plots."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import harness.training
from harness.errors import TrainingError
from harness.training import TrainingInterrupted, evaluate_loss
from tests.unit.test_training import built, tiny_config
from tests.unit.test_training_loop import expected_steps

pytestmark = pytest.mark.unit


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (Path(run.config.output_dir) / "metrics.jsonl").read_text().splitlines()]


def two_epochs(tmp_path, *sets):
    return built(
        tiny_config(
            tmp_path,
            "dataset.num_examples=24",
            "training.max_steps=null",
            "training.epochs=2",
            "training.save_steps=1000",
            "training.max_grad_norm=0.3",
            *sets,
        )
    )


def test_the_metrics_log_mirrors_the_step_records_and_marks_epochs_and_evals(tmp_path):
    run = two_epochs(tmp_path, "training.eval_steps=2")
    result = run.trainer().train()
    lines = metrics(run)
    per_epoch = result.steps_per_epoch
    assert [line for line in lines if line["type"] == "train"] == [
        {"type": "train", **dataclasses.asdict(r)} for r in result.history
    ]
    assert [line for line in lines if line["type"] == "epoch_end"] == [
        {"type": "epoch_end", "step": per_epoch, "epoch": 1},
        {"type": "epoch_end", "step": 2 * per_epoch, "epoch": 2},
    ]
    evals = [line for line in lines if line["type"] == "eval"]
    assert evals == [{"type": "eval", **e} for e in result.evals]
    assert [e["step"] for e in result.evals] == list(range(2, 2 * per_epoch + 1, 2))
    assert result.evals[-1]["eval_loss"] == pytest.approx(
        evaluate_loss(run.model, run.trainer().eval_batches, "cpu"), rel=1e-6
    )


def test_every_step_record_holds_what_that_step_measured(tmp_path):
    run = two_epochs(tmp_path)
    result = run.trainer().train()
    assert [(r.epoch, r.tokens, r.target_tokens) for r in result.history] == expected_steps(run, 2)
    for r in result.history:
        assert r.clipped_norm == pytest.approx(min(r.grad_norm, 0.3), rel=1e-3)
        assert 0 < r.seconds < 60 and r.tokens_per_s == pytest.approx(r.tokens / r.seconds)
        assert r.memory_mb > 100  # the process's peak resident set: torch alone is more
    assert sum(r.grad_norm > 0.3 for r in result.history) > 0  # clipping was exercised


def failing_on(monkeypatch, calls_that_fail: set[int]):
    real_step, calls = harness.training.training_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in calls_that_fail:
            raise TrainingError("loss is nan")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(harness.training, "training_step", step)


def test_a_skipped_batch_is_consumed_and_the_next_step_trains_the_next_batch(tmp_path, monkeypatch):
    run = two_epochs(tmp_path, "training.skip_nonfinite=1")
    failing_on(monkeypatch, {2})
    result = run.trainer().train()
    planned = expected_steps(run, 2)
    # the second batch of epoch 0 was skipped: its step is trained on the third, and so on
    assert [(r.epoch, r.tokens) for r in result.history[:3]] == [(e, t) for e, t, _ in (planned[0], *planned[2:4])]
    assert [line for line in metrics(run) if line["type"] == "skipped"] == [
        {"type": "skipped", "step": 2, "error": "loss is nan"}
    ]


def test_the_skip_budget_allows_exactly_its_number_of_bad_batches(tmp_path, monkeypatch):
    run = two_epochs(tmp_path, "training.skip_nonfinite=1")
    failing_on(monkeypatch, {2, 4})
    with pytest.raises(TrainingError) as caught:
        run.trainer().train()
    assert str(caught.value) == "step 3: loss is nan; stopped, no checkpoint was saved yet"
    assert metrics(run)[-1] == {"type": "error", "step": 3, "error": "loss is nan"}


def test_a_stop_request_checkpoints_the_step_and_says_where(tmp_path):
    run = two_epochs(tmp_path)
    trainer = run.trainer(on_step=lambda record: trainer.request_stop(15) if record.step == 3 else None)
    with pytest.raises(TrainingInterrupted) as caught:
        trainer.train()
    stop = caught.value
    checkpoint = Path(run.config.output_dir) / "checkpoint-000003"
    assert (stop.signum, stop.step, stop.checkpoint) == (15, 3, checkpoint)
    assert str(stop) == "stopped by signal 15 at step 3"
    assert metrics(run)[-1] == {"type": "interrupted", "step": 3, "signal": 15}
    assert (checkpoint / "manifest.json").is_file()


def test_a_stop_request_on_the_last_step_just_finishes(tmp_path):
    run = built(tiny_config(tmp_path, "training.max_steps=2", "training.save_steps=1000"))
    trainer = run.trainer(on_step=lambda record: trainer.request_stop(2) if record.step == 2 else None)
    result = trainer.train()
    assert [p.name for p in result.checkpoints] == ["checkpoint-000002"]


def test_out_of_memory_reports_the_peak_in_gb(tmp_path, monkeypatch):
    run = built(tiny_config(tmp_path, "training.max_steps=2"))

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(harness.training, "training_step", out_of_memory)
    monkeypatch.setattr(harness.training, "memory_mb", lambda device: 10240.0)
    with pytest.raises(TrainingError) as caught:
        run.trainer().train()
    assert str(caught.value) == (
        "step 1: CUDA out of memory (peak 10.00 GB allocated); try a smaller training.batch_size with more "
        "gradient_accumulation_steps, training.gradient_checkpointing: true, or adapter: qlora"
    )


def test_a_non_finite_gradient_norm_alone_stops_the_step_naming_it(tmp_path, monkeypatch):
    """A finite loss with an infinite gradient norm (an overflow in backward) is still a bad step."""
    run = built(tiny_config(tmp_path, "training.max_steps=2"))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda parameters, max_norm: torch.tensor(math.inf))
    with pytest.raises(TrainingError) as caught:
        run.trainer().train()
    assert str(caught.value) == "step 1: gradient norm is inf; stopped, no checkpoint was saved yet"


def test_an_infinite_loss_with_finite_gradients_is_named_with_its_own_value(tmp_path, monkeypatch):
    """The message quotes the loss, not the (finite) gradient norm."""
    run = built(tiny_config(tmp_path, "training.max_steps=2"))
    real = harness.training.loss_sum_and_count

    def infinite(model, batch, grad_scale=1.0):
        loss_sum, count = real(model, batch, grad_scale)
        return loss_sum + math.inf, count  # a constant: the gradient stays finite

    monkeypatch.setattr(harness.training, "loss_sum_and_count", infinite)
    with pytest.raises(TrainingError) as caught:
        run.trainer().train()
    assert str(caught.value) == "step 1: loss is inf; stopped, no checkpoint was saved yet"


def test_the_loss_sum_is_float32_for_bfloat16_hidden_states():
    hidden = torch.randn(5, 8, dtype=torch.bfloat16)
    total = harness.training.target_loss_sum(hidden, torch.randn(16, 8, dtype=torch.bfloat16), torch.arange(5))
    assert total.dtype == torch.float32
