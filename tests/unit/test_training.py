"""Training step, schedule, accumulation, checkpoints, resume and faults on the tiny Llama."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.checkpoint import list_checkpoints, verify_checkpoint
from harness.config import load_config
from harness.data.batching import pad_batch
from harness.data.formatting import IGNORE_INDEX, Example
from harness.errors import CheckpointError, TrainingError
from harness.recipe import prepare_run
from harness.training import build_optimizer, lr_factor, training_step
from harness.validation.checks import reference_learning_rates
from tests.helpers import Interrupted, interrupt_at

TINY = "harness/tiny-random-llama"


def tiny_config(tmp_path, *sets):
    base = [
        f"base_model={TINY}",
        f"output_dir={tmp_path / 'out'}",
        "dataset.num_examples=96",
        "dataset.max_length=320",
        "training.batch_size=4",
        "training.learning_rate=3e-3",
        "training.max_steps=8",
        "training.logging_steps=1",
        "training.save_steps=4",
        "training.warmup_ratio=0.25",
        "lora.r=4",
        "training.dtype=float32",
    ]
    return load_config(None, base + list(sets))


def built(config):
    run = prepare_run(config)
    run.build()
    return run


def lora_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # transformers' convention: warmup step / warmup_steps, so the first step has lr 0.
        ("linear", [0.0, 0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]),
        ("cosine", [0.0, 0.25, 0.5, 0.75] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]),
        ("constant", [0.0, 0.25, 0.5, 0.75] + [1.0] * 6),
    ],
)
def test_schedule_matches_a_literal_table(kind, expected):
    assert [lr_factor(s, 10, 4, kind) for s in range(10)] == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
@pytest.mark.parametrize(("total", "warmup"), [(10, 0), (10, 4), (113, 6), (7, 7)])
def test_schedule_equals_transformers_get_scheduler(kind, total, warmup):
    theirs = reference_learning_rates(total, warmup, kind, 1.0)
    assert [lr_factor(s, total, warmup, kind) for s in range(total)] == pytest.approx(theirs, abs=1e-12)


def test_trainer_lr_follows_the_schedule_at_every_step(tmp_path):
    run = built(tiny_config(tmp_path, "training.lr_scheduler=cosine"))
    trainer = run.trainer()
    result = trainer.train()
    assert trainer.warmup_steps == 2
    # warmup 2 of 8 steps, then cosine over 6: the literal values, not the harness's formula.
    expected = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert [record.lr for record in result.history] == pytest.approx([3e-3 * f for f in expected])


def test_clipping_is_applied_and_reported_after_clipping(tmp_path):
    run = built(tiny_config(tmp_path))
    batch = pad_batch(run.data.train[:4], pad_id=2)
    optimizer = build_optimizer(run.model, 1e-3, 0.0, torch.device("cpu"))
    result = training_step(run.model, batch, optimizer, max_grad_norm=1e-3)
    assert result.grad_norm > 1e-3
    assert result.clipped_norm == pytest.approx(1e-3, rel=1e-3)
    free = training_step(run.model, batch, optimizer)
    assert free.clipped_norm == pytest.approx(free.grad_norm, rel=1e-6)


def test_training_step_reports_finite_loss_tokens_and_grad_norm(tmp_path):
    run = built(tiny_config(tmp_path))
    batch = pad_batch(run.data.train[:4], pad_id=2)
    result = training_step(run.model, batch, build_optimizer(run.model, 1e-3, 0.0, torch.device("cpu")))
    assert math.isfinite(result.loss) and 0 < result.loss < 10
    assert result.num_targets == batch.num_targets and result.num_tokens == batch.num_tokens
    assert math.isfinite(result.grad_norm) and result.grad_norm > 0


def test_an_accumulated_steps_gradient_and_norm_are_those_of_transformers_loss(tmp_path):
    """Two micro batches, clipping off: the gradient left for the optimizer is autograd's through
    transformers' own loss of all the step's target tokens, and the reported norm is its norm. (AdamW
    is nearly blind to a gradient's scale, so training alone would not show a wrong scaling.)"""
    run = built(tiny_config(tmp_path))
    first, second = (pad_batch(run.data.train[start : start + 2], pad_id=2) for start in (0, 2))
    step = training_step(run.model, [first, second], None, max_grad_norm=1e9)
    trainable = [(name, p) for name, p in run.model.named_parameters() if p.requires_grad]
    ours = {name: p.grad.clone() for name, p in trainable}
    run.model.zero_grad(set_to_none=True)
    total = first.num_targets + second.num_targets
    for batch in (first, second):
        (run.model(**batch.inputs).loss * batch.num_targets / total).backward()
    theirs = {name: p.grad for name, p in trainable}
    their_norm = float(torch.nn.utils.get_total_norm(list(theirs.values())))
    worst = max(float((ours[n] - theirs[n]).abs().max()) for n in theirs) / max(
        float(g.abs().max()) for g in theirs.values()
    )
    print(f"gradient max relative difference {worst:.1e}; norm {step.grad_norm:.6g} vs transformers' {their_norm:.6g}")
    assert worst < 1e-5  # measured 1e-7 (fp32, 2 threads)
    assert step.grad_norm == pytest.approx(their_norm, rel=1e-5)
    assert step.clipped_norm == pytest.approx(their_norm, rel=1e-5)
    assert step.num_targets == total


def test_batch_4_equals_batch_2_with_accumulation_2(tmp_path):
    one = built(tiny_config(tmp_path, "training.max_steps=3", "training.max_grad_norm=1e9"))
    two = built(
        tiny_config(
            tmp_path,
            "training.max_steps=3",
            "training.max_grad_norm=1e9",
            "training.batch_size=2",
            "training.gradient_accumulation_steps=2",
        )
    )
    a = one.trainer(output_dir=str(tmp_path / "a")).train()
    b = two.trainer(output_dir=str(tmp_path / "b")).train()
    for x, y in zip(a.history, b.history):
        assert x.target_tokens == y.target_tokens
        assert y.loss == pytest.approx(x.loss, rel=1e-5)
        assert y.grad_norm == pytest.approx(x.grad_norm, rel=1e-4)
    wa, wb = lora_weights(one.model), lora_weights(two.model)
    max_diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(f"max |w(batch 4) - w(batch 2 x accum 2)| after 3 steps: {max_diff:.2e}")
    assert max_diff < 1e-5


def test_weight_decay_skips_norms_and_biases(tmp_path):
    run = built(tiny_config(tmp_path, "adapter=none"))
    optimizer = build_optimizer(run.model, 1e-3, 0.1, torch.device("cpu"))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, parameter in run.model.named_parameters():
        assert (id(parameter) in decayed) == ("norm" not in name and parameter.ndim >= 2), name
    # the configured decay, not AdamW's default of 0.01
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.1]


def test_biases_are_not_decayed():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=True))
    groups = build_optimizer(model, 1e-3, 0.1, torch.device("cpu")).param_groups
    assert [(g["weight_decay"], [p.ndim for p in g["params"]]) for g in groups] == [(0.1, [2]), (0.0, [1])]


@pytest.mark.parametrize(("device", "fused"), [("cuda", True), ("cpu", False)])
def test_the_fused_adamw_kernel_is_asked_for_on_cuda_only(device, fused):
    """(Built on CPU parameters either way: torch has a fused CPU AdamW too, so this runs anywhere.)"""
    optimizer = build_optimizer(torch.nn.Linear(4, 4), 1e-3, 0.0, torch.device(device))
    assert bool(optimizer.defaults["fused"]) is fused


def test_loss_decreases_and_metrics_are_logged(tmp_path):
    # A full fine-tune: LoRA on a random 2-layer model moves the loss too slowly to show in 30 steps.
    run = built(tiny_config(tmp_path, "training.max_steps=30", "training.eval_steps=10", "adapter=none"))
    result = run.trainer().train()
    first, last = result.history[0].loss, sum(r.loss for r in result.history[-5:]) / 5
    print(f"tiny full fine-tune: first loss {first:.3f}, mean of last 5 {last:.3f}")
    assert last < 0.8 * first
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["type"] == "train"] == list(range(1, 31))
    assert [line["step"] for line in lines if line["type"] == "eval"] == [10, 20, 30]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "memory_mb"} <= set(lines[0])


def test_checkpoints_load_with_plain_peft_and_reproduce_logits(tmp_path):
    from peft import PeftModel

    run = built(tiny_config(tmp_path))
    result = run.trainer().train()
    assert [p.name for p in result.checkpoints] == ["checkpoint-000004", "checkpoint-000008"]
    final = result.checkpoints[-1]
    assert {p.name for p in final.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json", "manifest.json"}
    batch = pad_batch(run.data.validation[:4], pad_id=2)
    run.model.eval()
    with torch.no_grad():
        trained = run.model(**{k: v for k, v in batch.inputs.items() if k != "labels"}).logits
        reloaded = PeftModel.from_pretrained(run.load_base(), str(final)).eval()
        again = reloaded(**{k: v for k, v in batch.inputs.items() if k != "labels"}).logits
    diff = float((trained - again).abs().max())
    print(f"max |logits(trained) - logits(PeftModel.from_pretrained)|: {diff:.2e}")
    assert diff == 0.0


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = built(tiny_config(tmp_path, "lora.dropout=0.1"))
    full = straight.trainer(output_dir=str(tmp_path / "full")).train()
    interrupted = built(tiny_config(tmp_path, "lora.dropout=0.1"))
    with pytest.raises(Interrupted):
        interrupted.trainer(output_dir=str(tmp_path / "half"), on_step=interrupt_at(5)).train()
    assert [p.name for p in list_checkpoints(tmp_path / "half")] == ["checkpoint-000004"]
    resumed_run = built(tiny_config(tmp_path, "lora.dropout=0.1"))
    resumed = resumed_run.trainer(output_dir=str(tmp_path / "half")).train(
        resume_from=tmp_path / "half" / "checkpoint-000004"
    )
    assert resumed.resumed_from == 4
    assert [r.loss for r in resumed.history] == pytest.approx([r.loss for r in full.history[4:]], rel=1e-6)
    wa, wb = lora_weights(straight.model), lora_weights(resumed_run.model)
    max_diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(
        f"resume: final loss {resumed.history[-1].loss:.6f} vs {full.history[-1].loss:.6f}, "
        f"max weight diff {max_diff:.1e}"
    )
    assert max_diff < 1e-6


def test_resume_rejects_a_checkpoint_of_another_plan(tmp_path):
    run = built(tiny_config(tmp_path))
    checkpoint = run.trainer().train().checkpoints[0]
    other = built(tiny_config(tmp_path, "training.max_steps=12"))
    with pytest.raises(CheckpointError, match="planned for 8 steps, this run plans 12"):
        other.trainer(output_dir=str(tmp_path / "other")).train(resume_from=checkpoint)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("seed=7", "written with seed 42, this run has 7"),
        ("dataset.num_examples=90", "written with data_fingerprint"),
    ],
)
def test_resume_refuses_another_seed_or_dataset(tmp_path, change, message):
    checkpoint = built(tiny_config(tmp_path)).trainer().train().checkpoints[0]
    other = built(tiny_config(tmp_path, change))
    with pytest.raises(CheckpointError, match=message):
        other.trainer(output_dir=str(tmp_path / "other")).train(resume_from=checkpoint)


def test_resume_refuses_another_number_of_ranks(tmp_path):
    import dataclasses

    checkpoint = built(tiny_config(tmp_path)).trainer().train().checkpoints[0]
    trainer = built(tiny_config(tmp_path)).trainer(output_dir=str(tmp_path / "other"))
    trainer.world = dataclasses.replace(trainer.world, size=2)
    with pytest.raises(CheckpointError, match="written with world_size 1, this run has 2"):
        trainer.train(resume_from=checkpoint)


def test_resume_keeps_the_skip_nonfinite_budget(tmp_path):
    first = built(tiny_config(tmp_path)).trainer()
    first.skipped.append({"step": 2, "error": "loss is nan"})
    checkpoint = first.train().checkpoints[0]
    resumed = built(tiny_config(tmp_path)).trainer(output_dir=str(tmp_path / "other")).train(resume_from=checkpoint)
    assert resumed.skipped == [{"step": 2, "error": "loss is nan"}]


def test_loading_an_adapter_with_missing_lora_tensors_fails(tmp_path):
    from harness.checkpoint import load_weights_into

    checkpoint = built(tiny_config(tmp_path, "lora.target_modules=[q_proj]")).trainer().train().checkpoints[0]
    wider = built(tiny_config(tmp_path, "lora.target_modules=[q_proj, v_proj]"))
    with pytest.raises(CheckpointError, match=r"LoRA tensors of this model are missing, e\.g\. .*v_proj"):
        load_weights_into(wider.model, checkpoint)


def test_full_fine_tune_checkpoints_load_strictly(tmp_path):
    from safetensors.torch import load_file, save_file

    from harness.checkpoint import load_weights_into, write_manifest

    run = built(tiny_config(tmp_path, "adapter=none", "training.max_steps=4"))
    checkpoint = run.trainer().train().checkpoints[-1]
    load_weights_into(run.model, checkpoint)  # a complete file loads (a tied LM head is written once)
    weights = load_file(str(checkpoint / "model.safetensors"))
    dropped = sorted(weights)[0]
    del weights[dropped]
    save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    write_manifest(checkpoint)
    with pytest.raises(CheckpointError, match=f"does not match this model \\(missing {dropped}\\)"):
        load_weights_into(run.model, checkpoint)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = built(tiny_config(tmp_path, "training.save_steps=2"))

    def poison(record):
        if record.step == 3:
            with torch.no_grad():
                next(p for p in run.model.parameters() if p.requires_grad).fill_(float("nan"))

    with pytest.raises(TrainingError) as caught:
        run.trainer(on_step=poison).train()
    message = str(caught.value)
    assert message.startswith("step 4: loss is nan; stopped, last good checkpoint: ")
    assert message.endswith("checkpoint-000002")
    verify_checkpoint(tmp_path / "out" / "checkpoint-000002")
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-000002"]


def test_no_target_tokens_is_an_error():
    from harness.training import training_step as step

    batch = pad_batch([Example([1, 5, 6], [IGNORE_INDEX] * 3)], pad_id=2)
    with pytest.raises(TrainingError) as caught:
        step(torch.nn.Linear(1, 1), batch)
    assert str(caught.value) == "batch has no target tokens (every label is masked)"


def test_a_step_leaves_no_gradient_behind(tmp_path):
    """Freed, not zeroed (set_to_none): between steps no gradient memory is held."""
    run = built(tiny_config(tmp_path))
    batch = pad_batch(run.data.train[:4], pad_id=2)
    training_step(run.model, batch, build_optimizer(run.model, 1e-3, 0.0, torch.device("cpu")))
    assert all(p.grad is None for p in run.model.parameters())


def test_a_step_stopped_by_a_non_finite_loss_leaves_no_gradient_behind(tmp_path):
    """Otherwise a skipped step's nan gradient would be added into the next step's."""
    run = built(tiny_config(tmp_path))
    batch = pad_batch(run.data.train[:4], pad_id=2)
    lora = [p for p in run.model.parameters() if p.requires_grad]
    with torch.no_grad():
        lora[0].fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss is nan"):
        training_step(run.model, batch, build_optimizer(run.model, 1e-3, 0.0, torch.device("cpu")))
    assert all(p.grad is None for p in lora)
