"""The harness Trainer against transformers' Trainer (harness.oracle) on the tiny Llama: the same seeded
LoRA init, the same micro batches in the same order, AdamW with weight decay, warmup + cosine,
gradient accumulation 2, clipping active on most steps, 2 epochs; padded and packed.

Measured on CPU float32 (torch 2.13, transformers 5.24): per-step losses within 2.4e-7 relative (the
loss is summed in another order: only target positions here, full logits there) and final adapter
weights bitwise equal (the gradient of a cross-entropy term does not depend on the order its terms
are summed in). The 1e-5 tolerance leaves about 40x headroom for other CPUs and BLAS builds; a planted
fault (a harness that does not clip) ends 2.3e-3 off in loss and 4.3e-2 (relative) in weights.
"""

from __future__ import annotations

import dataclasses

import pytest

from harness.config import load_config
from harness.oracle import run_oracle, trainable_weights
from harness.recipe import prepare_run
from tests.helpers import compare_with_oracle

TINY = "harness/tiny-random-llama"
TOLERANCE = 1e-5
MAX_GRAD_NORM = 0.5  # the tiny model's pre-clip norms are 0.6-2.2 here: clipped on most steps


def oracle_config(tmp_path, *sets):
    return load_config(
        None,
        [
            f"base_model={TINY}",
            f"output_dir={tmp_path / 'harness'}",
            "dataset.num_examples=60",
            "dataset.max_length=320",
            "training.batch_size=4",
            "training.gradient_accumulation_steps=2",
            "training.epochs=2",
            "training.learning_rate=3e-3",
            "training.lr_scheduler=cosine",
            "training.warmup_ratio=0.2",
            "training.weight_decay=0.01",
            f"training.max_grad_norm={MAX_GRAD_NORM}",
            "training.save_steps=1000",
            "training.dtype=float32",
            "lora.r=4",
            "lora.target_modules=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]",
            *sets,
        ],
    )


def train_both(config, oracle_config=None):
    """The harness run of ``config``, then transformers' Trainer from the same initial weights (on
    ``oracle_config`` when given, to plant a difference)."""
    run = prepare_run(config)
    run.build()
    initial = trainable_weights(run.model)
    result = run.trainer().train()
    if oracle_config is not None:
        run.config = oracle_config
    oracle = run_oracle(run, initial=initial)
    return run, initial, result, oracle


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_transformers_trainer_agrees_with_the_harness_step_by_step(tmp_path, packed):
    sets = ["training.packing=true", "dataset.max_length=640"] if packed else []
    run, initial, result, oracle = train_both(oracle_config(tmp_path, *sets))
    seen = compare_with_oracle(
        "packed" if packed else "padded", run, initial, result, oracle, max_grad_norm=MAX_GRAD_NORM
    )
    assert result.epochs_completed == 2 and len(oracle.losses) == len(result.history) == result.total_steps
    assert seen["clipped"] > 0.5
    assert seen["moved"] > 1e-3  # the comparison is not between two untrained adapters
    assert seen["worst"] <= TOLERANCE
    assert seen["difference"] <= TOLERANCE * seen["scale"]
    assert [r.lr for r in result.history] == pytest.approx(oracle.learning_rates, rel=1e-9, abs=1e-15)
    assert [r.grad_norm for r in result.history] == pytest.approx(oracle.grad_norms, rel=TOLERANCE)


def test_the_oracle_catches_a_harness_that_does_not_clip(tmp_path):
    """The harness trains without clipping, transformers with it: the oracle must see it."""
    config = oracle_config(tmp_path)
    unclipped = dataclasses.replace(config, training=dataclasses.replace(config.training, max_grad_norm=1e9))
    run, initial, result, oracle = train_both(unclipped, oracle_config=config)
    seen = compare_with_oracle("no clipping in the harness", run, initial, result, oracle, max_grad_norm=MAX_GRAD_NORM)
    assert seen["worst"] > 100 * TOLERANCE and seen["difference"] > 100 * TOLERANCE * seen["scale"]


def test_validation_oracle_true_adds_the_criterion_to_the_report(tmp_path):
    from harness.validation import PASS, validate

    outcome = validate(oracle_config(tmp_path, "validation.oracle=true"), tmp_path / "validate")
    criteria = {c.id: c for c in outcome.criteria}
    print(criteria["oracle_parity"])
    assert len(criteria) == 16 and criteria["oracle_parity"].status == PASS
    assert outcome.evidence.oracle is not None and len(outcome.evidence.oracle.oracle_losses) == 12
