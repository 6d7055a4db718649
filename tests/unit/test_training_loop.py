"""The Trainer's loop on the tiny Llama: it trains exactly the micro batches the data layer gives for
(seed, epoch), from the first one of epoch 0, in order, across epochs; its result states the plan it
ran; its progress bar, on a terminal and on rank 0 only, counts each step from the resumed one and
shows the last loss and learning rate; and a failure after a resume names the
checkpoint the run resumed from as the last good one."""

from __future__ import annotations

import functools
import io
import math
import re
import sys

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
    assert result.epochs_completed == 0  # 6 of 10 steps: the epoch is not complete


@pytest.mark.parametrize(
    "setting", ["training.packing=true", "training.group_by_length=true"], ids=["packing", "group_by_length"]
)
def test_the_trainer_plans_its_epochs_with_the_configs_batching(tmp_path, setting):
    run = built(tiny_config(tmp_path, setting, "dataset.max_length=1024"))  # rows of ~300 tokens: 3 to a pack
    training = run.config.training
    epoch_1 = functools.partial(
        epoch_batches,
        run.data.train,
        batch_size=training.batch_size,
        max_length=run.config.dataset.max_length,
        pad_id=pad_token_id(run.tokenizer),
        seed=run.config.seed,
        epoch=1,
    )
    expected = epoch_1(packing=training.packing, group_by_length=training.group_by_length)
    plain = epoch_1()
    shapes = [tuple(b.inputs["input_ids"].shape) for b in run.trainer()._epoch_plan(1)]
    assert shapes == [tuple(b.inputs["input_ids"].shape) for b in expected]
    assert shapes != [tuple(b.inputs["input_ids"].shape) for b in plain]  # the setting is visible


@pytest.mark.parametrize(("device", "multiple_of_8"), [("cuda", True), ("cpu", False)])
def test_batches_are_padded_to_a_multiple_of_8_on_cuda_only(tmp_path, device, multiple_of_8):
    """Tensor cores want multiples of 8; on CPU the padding would only cost time. (Planning builds
    host tensors, so a CPU machine can plan a CUDA trainer's epoch.)"""
    trainer = built(tiny_config(tmp_path)).trainer()
    trainer.device = torch.device(device)
    widths = [b.inputs["input_ids"].shape[1] for b in trainer._epoch_plan(0)]
    assert all(w % 8 == 0 for w in widths) is multiple_of_8, widths


def test_the_held_out_batches_are_the_first_validation_examples_in_order(tmp_path):
    """The held-out loss is comparable across runs and steps only if it is always the same rows."""
    run = built(tiny_config(tmp_path))
    trainer = run.trainer()
    rows = [
        ids[mask.bool()].tolist()
        for batch in trainer.eval_batches
        for ids, mask in zip(batch.inputs["input_ids"], batch.inputs["attention_mask"])
    ]
    cap = run.config.training.eval_batches * run.config.training.batch_size
    assert len(run.data.validation) > cap  # the cap applies, so another order would give other rows
    assert rows == [list(example.input_ids) for example in run.data.validation[:cap]]


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


class Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_on_a_terminal_the_bar_counts_each_step_and_shows_the_last_loss_and_lr(tmp_path, monkeypatch):
    terminal = Terminal(tty=True)
    monkeypatch.setattr(sys, "stderr", terminal)
    last = built(tiny_config(tmp_path, "training.max_steps=4")).trainer().train().history[-1]
    frames = [frame for frame in re.split(r"[\r\n]", terminal.getvalue()) if frame.strip()]
    counts = [int(re.search(r"(\d+)/4 ", frame).group(1)) for frame in frames]
    assert counts[0] == 0 and counts[-1] == 4 and counts == sorted(counts), frames
    assert frames[-1].startswith("train: 100%") and ("step/s" in frames[-1] or "s/step" in frames[-1]), frames[-1]
    assert f"loss={last.loss:.3f}, lr={last.lr:.2e}]" in frames[-1], frames[-1]


@pytest.mark.parametrize(
    ("tty", "enabled", "shown"), [(True, True, True), (True, False, False), (False, True, False), (False, False, False)]
)
def test_the_bar_shows_only_on_a_terminal_and_only_where_enabled(monkeypatch, tty, enabled, shown):
    """Rank 0 alone draws it, and a log file gets no carriage-return frames."""
    monkeypatch.setattr(sys, "stderr", Terminal(tty))
    bar = harness.training._progress(8, 2, enabled=enabled)
    assert (not bar.disable) == shown
    if shown:
        assert (bar.total, bar.n, bar.desc, bar.unit) == (8, 2, "train", "step")
        assert bar.dynamic_ncols  # follows the terminal's width as it changes
    bar.close()


def test_the_bar_is_enabled_unless_told_otherwise(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal(tty=True))
    bar = harness.training._progress(8, 0)
    assert not bar.disable
    bar.close()


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
