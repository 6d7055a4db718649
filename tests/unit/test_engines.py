"""TRL's SFTTrainer as a second engine (harness.engines.trl) on the tiny Llama: its log history mapped
into the evidence, the same run step by step beside the harness loop, the criteria judging it (a
planted TRL-side fault fails them), and the engines-agree criterion on literal evidence.

Measured on CPU float32 (torch 2.13, transformers 5.24, trl 1.16): the tiny run below agrees with the
harness loop within 1e-7 relative per step (TRL scores the loss through its fused LM head, the harness
over target positions only: another summation order); lrs and pre/post-clip norms equal.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.config import ValidationSection, load_config
from harness.errors import TrainingError
from harness.validation import FAIL, PASS, SKIPPED, validate
from harness.validation.checks import CHECKS, judge_one
from harness.validation.evidence import EnginesEvidence, Evidence

pytest.importorskip("trl", reason="the trl extra is not installed (pip install -e '.[trl]')")

TINY = "harness/tiny-random-llama"
FAST = [
    f"base_model={TINY}",
    "dataset.num_examples=140",
    "training.batch_size=2",
    "validation.min_steps=20",
    "validation.eval_examples=8",
    "dataset.max_length=320",
    "training.max_steps=20",
    "lora.r=4",
]


# ---------------------------------------------------------------- log history -> step records


def test_log_history_maps_into_step_records():
    from harness.engines.trl import Observed, steps_from_log

    log = [
        {"loss": 5.5, "grad_norm": 2.5, "learning_rate": 0.0, "epoch": 0.5, "step": 1, "num_tokens": 100.0},
        {"loss": 5.25, "grad_norm": 0.75, "learning_rate": 1e-3, "epoch": 1.0, "step": 2, "num_tokens": 180.0},
        {"train_runtime": 1.0, "train_loss": 5.4, "epoch": 1.0, "step": 2},  # the end-of-training summary
    ]
    observed = [Observed(1, 0, 1.0, 100, 40, 0.5), Observed(2, 0, 0.75, 80, 30, 0.25)]
    records = steps_from_log(log, observed, memory=12.0)
    got = [(r.step, r.epoch, r.loss, r.lr, r.grad_norm, r.clipped_norm, r.tokens, r.target_tokens) for r in records]
    assert got == [(1, 0, 5.5, 0.0, 2.5, 1.0, 100, 40), (2, 0, 5.25, 1e-3, 0.75, 0.75, 80, 30)]
    assert [r.tokens_per_s for r in records] == [200.0, 320.0] and records[0].memory_mb == 12.0


def test_a_step_missing_from_the_log_history_is_an_error_not_a_guess():
    from harness.engines.trl import Observed, steps_from_log

    observed = [Observed(1, 0, 1.0, 10, 4, 0.1), Observed(2, 0, 1.0, 10, 4, 0.1)]
    with pytest.raises(TrainingError, match="no loss for step 2 \\(logging_steps must be 1\\)"):
        steps_from_log([{"loss": 1.0, "grad_norm": 1.0, "learning_rate": 1.0, "step": 1}], observed)
    with pytest.raises(TrainingError, match="step 1 has no grad_norm"):
        steps_from_log([{"loss": 1.0, "learning_rate": 1.0, "step": 1}], observed[:1])


# ---------------------------------------------------------------- the same run through both engines


def test_trl_trains_the_tiny_model_step_by_step_like_the_harness_loop(tmp_path):
    """The wiring: peft_config, completion mask, order, accumulation, clipping and schedule reach TRL."""
    from peft import PeftModel

    from harness.engines.trl import TrlTrainer
    from harness.recipe import prepare_run

    config = load_config(
        None,
        [
            *FAST[:-2],
            "lora.r=4",
            "dataset.num_examples=40",
            "training.epochs=2",
            "training.batch_size=4",
            "training.gradient_accumulation_steps=2",
            "training.lr_scheduler=cosine",
            "training.warmup_ratio=0.2",
            "training.weight_decay=0.01",
            "training.max_grad_norm=0.5",
            f"output_dir={tmp_path / 'harness'}",
        ],
    )
    run = prepare_run(config)
    run.build()
    ours = run.trainer().train()
    engine = TrlTrainer(run, tmp_path / "trl")
    theirs = engine.train()
    assert (engine.total_steps, engine.warmup_steps, engine.epochs_planned) == (ours.total_steps, ours.warmup_steps, 2)
    assert len(theirs.history) == len(ours.history) == 8 and theirs.epochs_completed == 2
    for a, b in zip(ours.history, theirs.history):
        print(
            f"step {a.step} (epoch {a.epoch}/{b.epoch}): harness {a.loss:.8f} TRL {b.loss:.8f} "
            f"rel diff {abs(a.loss - b.loss) / b.loss:.1e}; lr {a.lr:.3e}/{b.lr:.3e}; grad norm "
            f"{a.grad_norm:.5f}/{b.grad_norm:.5f}, clipped {a.clipped_norm:.5f}/{b.clipped_norm:.5f}; "
            f"target tokens {a.target_tokens}/{b.target_tokens}"
        )
    assert [b.loss for b in theirs.history] == pytest.approx([a.loss for a in ours.history], rel=1e-5)
    assert [b.lr for b in theirs.history] == pytest.approx([a.lr for a in ours.history], rel=1e-9, abs=1e-15)
    assert [b.grad_norm for b in theirs.history] == pytest.approx([a.grad_norm for a in ours.history], rel=1e-4)
    assert [b.clipped_norm for b in theirs.history] == pytest.approx([a.clipped_norm for a in ours.history], rel=1e-4)
    assert sum(a.grad_norm > 0.5 for a in ours.history) >= 4  # clipping is exercised
    assert [(b.epoch, b.target_tokens, b.tokens) for b in theirs.history] == [
        (a.epoch, a.target_tokens, a.tokens) for a in ours.history
    ]
    final = theirs.checkpoints[-1]
    assert {p.name for p in final.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    reloaded = PeftModel.from_pretrained(run.load_base(), str(final))
    assert reloaded.peft_config["default"].base_model_name_or_path == TINY


def test_trl_engine_refuses_a_full_fine_tune(tmp_path):
    from harness.engines.trl import TrlTrainer
    from harness.errors import ConfigError
    from harness.recipe import prepare_run

    run = prepare_run(load_config(None, [*FAST, "adapter=none"]))
    with pytest.raises(ConfigError, match="training.engine: trl trains LoRA and QLoRA adapters"):
        TrlTrainer(run, tmp_path)


# ---------------------------------------------------------------- the criteria judge TRL's run


def by_id(outcome):
    return {c.id: c for c in outcome.criteria}


def test_both_engines_agree_in_a_tiny_validation(tmp_path):
    outcome = validate(load_config(None, [*FAST, "validation.compare_engines=true"]), tmp_path)
    got = by_id(outcome)
    for c in outcome.criteria:
        print(f"{c.id}: {c.status} {c.measured} {c.detail}")
    assert outcome.evidence.engine == "harness"
    assert got["engines_agree"].status == PASS and got["engines_agree"].measured.startswith("20 steps")
    assert outcome.exit_code == 0


def test_learning_rate_zero_in_trl_fails_the_loss_criterion(tmp_path):
    outcome = validate(load_config(None, [*FAST, "training.engine=trl", "training.learning_rate=0"]), tmp_path)
    got = by_id(outcome)
    print(got["loss_decreases"])
    assert outcome.evidence.engine == "trl"
    assert got["loss_decreases"].status == FAIL and "x1.000, 0.0 standard errors" in got["loss_decreases"].measured
    for passing in ("training_step", "checkpoint_saves", "checkpoint_loads", "lr_schedule", "adapter_config"):
        assert got[passing].status == PASS, got[passing]
    assert got["checkpoint_loads"].detail == "reloaded with peft.PeftModel.from_pretrained"
    assert got["generation"].status == SKIPPED  # random init: no text to judge
    assert outcome.exit_code == 1


# ---------------------------------------------------------------- engines agree, on literal evidence


def engines_verdict(harness, trl, packing=False):
    spec = next(s for s in CHECKS if s.id == "engines_agree")
    return judge_one(spec, Evidence(engines=EnginesEvidence(harness, trl, packing, 3.0)), ValidationSection())


def test_engines_agree_within_the_tolerance_passes():
    c = engines_verdict([2.0, 1.5, 1.0], [2.0, 1.5 * (1 + 9e-4), 1.0])
    assert (c.status, c.measured) == (PASS, "3 steps; step 1: 0.0e+00; max relative loss difference 9.0e-04")
    assert c.threshold.startswith("the same steps; every step's loss within 0.001 relative")


@pytest.mark.parametrize(
    ("harness", "trl", "detail"),
    [
        ([2.0, 1.5, 1.0], [2.0, 1.5 * (1 + 2e-3), 1.0], "step 2: harness 1.5, TRL 1.503"),
        ([2.0, 1.5, 1.0], [2.0, 1.5], "the harness ran 3 steps, TRL 2"),
        ([2.0, math.nan], [2.0, 1.0], "step 2: harness nan, TRL 1"),
        ([], [], "the harness ran 0 steps, TRL 0"),
    ],
)
def test_engines_that_disagree_fail_naming_the_step(harness, trl, detail):
    c = engines_verdict(harness, trl)
    assert c.status == FAIL and c.detail == detail


def test_engines_agree_is_skipped_with_packing_and_says_what_it_measured():
    c = engines_verdict([2.0, 1.5], [2.1, 1.5, 1.4], packing=True)
    assert c.status == SKIPPED
    assert c.detail.endswith("measured 2 harness / 3 TRL steps, max relative loss difference 4.8e-02")


# ---------------------------------------------------------------- CLI and config


@pytest.mark.parametrize(
    ("flag", "engine", "compare"),
    [(None, "harness", False), ("harness", "harness", False), ("trl", "trl", False), ("both", "harness", True)],
)
def test_engine_flag_sets_the_config(flag, engine, compare):
    from harness.cli import _load_run_config, build_parser

    args = build_parser().parse_args(["validate", *(["--engine", flag] if flag else [])])
    config = _load_run_config(args)
    assert (config.training.engine, config.validation.compare_engines) == (engine, compare)


def test_unknown_engine_in_a_config_is_one_line():
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--set training.engine=axolotl: training.engine: must be one of"):
        load_config(None, ["training.engine=axolotl"])


@pytest.mark.parametrize("engine", ["trl", "both"])
def test_torchrun_refuses_the_trl_engine_in_one_line(engine, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["validate", "--engine", engine]) == 2
    assert capsys.readouterr().err == (
        "error: --engine trl/both: TRL's SFTTrainer is validated in one process; run without torchrun\n"
    )


def test_harness_train_refuses_the_trl_engine_in_one_line(capsys):
    from harness.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "smollm2_qlora_dev.yaml"
    assert main(["train", str(config), "--set", "training.engine=trl"]) == 2
    assert capsys.readouterr().err == (
        "error: training.engine: trl is for harness validate; harness train runs the harness loop\n"
    )
