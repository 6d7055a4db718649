"""Every success criterion judged on synthetic evidence: one that must PASS and one that must FAIL.

The evidence below is what a healthy run measures; each FAIL test breaks the one thing its check
exists to catch. References are independent of the harness: literal learning-rate tables in
transformers' convention, ln(vocab), the wrapped layers' own shapes.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from harness.config import ValidationSection
from harness.validation.checks import (
    CHECKS,
    FAIL,
    PASS,
    SKIPPED,
    is_coherent,
    judge,
    judge_one,
    reference_learning_rates,
)
from harness.validation.evidence import (
    AdapterEvidence,
    Answer,
    EnginesEvidence,
    Evidence,
    ForwardEvidence,
    HeldOutLoss,
    LoadEvidence,
    LoraLayer,
    ModelState,
    OracleEvidence,
    ReloadEvidence,
    SavedEvidence,
    StepEvidence,
    TokenizerEvidence,
    TrainingEvidence,
    paired_drop,
)

pytestmark = pytest.mark.unit

T = ValidationSection()
VOCAB = 49152
STEPS = 100
WARMUP = 5
PEAK = 1e-3


def linear_lr(step: int) -> float:
    """transformers' linear schedule with warmup, written out (step is 1-based)."""
    k = step - 1
    return PEAK * (k / WARMUP if k < WARMUP else max(0.0, (STEPS - k) / (STEPS - WARMUP)))


def steps(n: int = STEPS, per_epoch: int = 50, targets: int = 30) -> list[StepEvidence]:
    out = []
    for i in range(1, n + 1):
        norm = 2.0 if i % 2 else 0.5
        out.append(
            StepEvidence(i, (i - 1) // per_epoch, 1.2 - i / 200, linear_lr(i), norm, min(norm, 1.0), 400, targets, 0.1)
        )
    return out


def layers(count: int = 4) -> list[LoraLayer]:
    return [
        LoraLayer(f"base_model.model.model.layers.{i}.self_attn.q_proj", (8, 64), (64, 8), 64, 64, 64, 64)
        for i in range(count)
    ]


def held_out(scale: float) -> HeldOutLoss:
    return HeldOutLoss([scale * (10 + i % 3) for i in range(20)], [10] * 20)


def answers(correct: int, n: int = 10, text: str = "24, 54, 74, 86") -> list[Answer]:
    return [Answer("74, 54, 24, 86", "24, 54, 74, 86", text, True, i < correct, "sort_numbers") for i in range(n)]


def good() -> Evidence:
    adapter_layers = layers()
    names = [f"{layer.name}.lora_{ab}.weight" for layer in adapter_layers for ab in "AB"]
    config = {
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj"],
    }
    return Evidence(
        adapter_kind="lora",
        data_kind="tasks",
        load=LoadEvidence(
            "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct", "hf_home", "/snap", False, 1.0
        ),
        tokenizer=TokenizerEvidence("Hello — world", 4, "Hello — world"),
        forward=ForwardEvidence((1, 5, VOCAB), (1, 5, VOCAB), True),
        adapter=AdapterEvidence("lora", 8, ["q_proj"], 4, adapter_layers, "lora: 4 layers"),
        before=ModelState(held_out(1.0), answers(0), 16.0),
        training=TrainingEvidence(steps(), STEPS, WARMUP, 50, 2, 2, "linear", PEAK, 1.0, VOCAB, 50 * 30, 10.0),
        saved=SavedEvidence("/ckpt", "adapter_model.safetensors", True, names, 1000),
        reload=ReloadEvidence(0.0, 0.5, config, dict(config), None),
        after=ModelState(held_out(0.5), answers(9), 18.0),
    )


def status(evidence: Evidence, check_id: str, thresholds: ValidationSection = T) -> str:
    spec = next(s for s in CHECKS if s.id == check_id)
    criterion = judge_one(spec, evidence, thresholds)
    print(criterion)
    return criterion.status


def replace(evidence: Evidence, path: str, **changes) -> Evidence:
    """A copy of ``evidence`` with ``changes`` applied to the piece at ``path`` (e.g. 'training')."""
    copy = dataclasses.replace(evidence)
    setattr(copy, path, dataclasses.replace(getattr(evidence, path), **changes))
    return copy


def test_registry_has_the_fifteen_criteria_in_the_documents_order():
    assert [s.id for s in CHECKS if s.requested_by] == ["oracle_parity", "engines_agree"]  # opt-in, after the fifteen
    assert [s.id for s in CHECKS if not s.requested_by] == [
        "model_loads",
        "tokenizer_roundtrip",
        "forward_logits",
        "adapter_dimensions",
        "training_step",
        "first_loss",
        "checkpoint_saves",
        "checkpoint_loads",
        "loss_decreases",
        "gradient_norms",
        "lr_schedule",
        "epochs_complete",
        "adapter_config",
        "generation",
        "forgetting_guard",
    ]


def test_healthy_evidence_passes_every_criterion():
    criteria = judge(good(), T)
    assert {c.id: c.status for c in criteria} == {s.id: PASS for s in CHECKS if not s.requested_by}, criteria
    assert all(c.measured and c.threshold for c in criteria)


BROKEN = {
    "model_loads": lambda e: replace(e, "load", missing_keys=["model.layers.0.mlp.up_proj.weight"]),
    "tokenizer_roundtrip": lambda e: replace(e, "tokenizer", decoded="Hello ? world"),
    "forward_logits": lambda e: replace(e, "forward", finite=False),
    "adapter_dimensions": lambda e: replace(
        e, "adapter", layers=e.adapter.layers[:3] + [dataclasses.replace(e.adapter.layers[3], b_shape=(32, 8))]
    ),
    "training_step": lambda e: replace(
        e, "training", steps=[dataclasses.replace(s, grad_norm=0.0) for s in e.training.steps]
    ),
    "first_loss": lambda e: replace(
        e, "training", steps=[dataclasses.replace(e.training.steps[0], loss=math.log(VOCAB))] + e.training.steps[1:]
    ),
    "checkpoint_saves": lambda e: replace(e, "saved", tensor_names=e.saved.tensor_names[:-1]),
    "checkpoint_loads": lambda e: replace(e, "reload", max_logit_diff=0.1),
    "loss_decreases": lambda e: replace(e, "after", held_out=held_out(1.0)),
    "gradient_norms": lambda e: replace(
        e, "training", steps=[dataclasses.replace(s, clipped_norm=s.grad_norm) for s in e.training.steps]
    ),
    "lr_schedule": lambda e: replace(
        e,
        "training",
        steps=[
            dataclasses.replace(s, lr=PEAK * (s.step / WARMUP if s.step <= WARMUP else 1)) for s in e.training.steps
        ],
    ),
    "epochs_complete": lambda e: replace(
        e, "training", steps=e.training.steps[:-1] + [dataclasses.replace(e.training.steps[-1], epoch=2)]
    ),
    "adapter_config": lambda e: replace(e, "reload", adapter_config=e.reload.adapter_config | {"r": 16}),
    "generation": lambda e: replace(e, "after", answers=answers(4)),
    "forgetting_guard": lambda e: replace(e, "after", reference_perplexity=25.0),
}


HEALTHY_REPORT = [
    (
        "model_loads",
        "HuggingFaceTB/SmolLM2-135M-Instruct from hf_home, loaded in 1.0 s; 0 missing, 0 unexpected, 0 mismatched keys",
        "a snapshot found in a cache or local dir; the loader reports no missing, unexpected or mismatched keys",
        "/snap",
    ),
    ("tokenizer_roundtrip", "4 tokens, round trip exact", "decode(encode(text)) == text, at least one token", ""),
    ("forward_logits", "shape (1, 5, 49152), all finite", "shape (1, 5, 49152), all finite", ""),
    (
        "adapter_dimensions",
        "4 layers, 4 with A (r x in) and B (out x r) equal to the wrapped layer's shape and to ModelInfo",
        "4 layers x 1 targets = 4, every shape equal",
        "lora: 4 layers",
    ),
    (
        "training_step",
        "step 1: 400 tokens in 0.10 s, loss 1.1950, gradient norm 2",
        "completes with a finite loss and a non-zero gradient reaching the trainable weights",
        "",
    ),
    ("first_loss", "1.1950 (0.11 x ln(49152))", "pretrained: finite and <= 0.6 x ln(vocab) = 6.48", ""),
    (
        "checkpoint_saves",
        "adapter_model.safetensors: readable safetensors, 8 tensors, 1,000 bytes",
        "a readable safetensors file holding lora_A and lora_B for each of the 4 adapted layers (8)",
        "/ckpt",
    ),
    (
        "checkpoint_loads",
        "max |logit diff| 0.00e+00; the adapter moves the logits by up to 0.5",
        "<= 0.0001",
        "reloaded with peft.PeftModel.from_pretrained",
    ),
    (
        "loss_decreases",
        "held-out loss 1.0950 -> 0.5475 (x0.500, 59.3 standard errors; n=20) after 100 steps",
        "<= x0.95 and >= 3 standard errors, over >= 100 steps",
        "training loss: first step 1.1950, last 0.7000",
    ),
    (
        "gradient_norms",
        "pre-clip min 0.5, median 1.25, max 2; clipped to 1 on 50/100 steps",
        "all finite, max <= 100, median >= 1e-06; after clipping = min(norm, 1)",
        "",
    ),
    (
        "lr_schedule",
        "100/100 steps match (linear, 5 warmup steps, peak 0.001)",
        "every step's lr == transformers.get_scheduler's",
        "",
    ),
    (
        "epochs_complete",
        "2/2 epochs; steps per epoch [50, 50]; target tokens per epoch [1500, 1500]",
        "every epoch: 50 steps and the training set's 1500 target tokens",
        "",
    ),
    (
        "adapter_config",
        "parsed by peft.LoraConfig.from_pretrained; r=8, lora_alpha=16, task_type='CAUSAL_LM'",
        "parses with PEFT; lists base_model_name_or_path, peft_type, r, lora_alpha, target_modules, task_type; values equal the trained adapter's",  # noqa: E501
        "",
    ),
    (
        "generation",
        "held-out exact match 0% -> 90% (+90 points; n=10)",
        ">= +50 points",
        "after, per family: sort_numbers 90%",
    ),
    ("forgetting_guard", "perplexity 16.00 -> 18.00 (x1.12)", "<= x1.5", ""),
]

BROKEN_REPORT = {
    "model_loads": (
        "HuggingFaceTB/SmolLM2-135M-Instruct from hf_home, loaded in 1.0 s; 1 missing, 0 unexpected, 0 mismatched keys",
        "missing: model.layers.0.mlp.up_proj.weight",
    ),
    "tokenizer_roundtrip": ("4 tokens, round trip differs", "first difference at character 6"),
    "forward_logits": ("shape (1, 5, 49152), non-finite values", ""),
    "adapter_dimensions": (
        "4 layers, 3 with A (r x in) and B (out x r) equal to the wrapped layer's shape and to ModelInfo",
        "base_model.model.model.layers.3.self_attn.q_proj: A(8, 64) B(32, 8), its linear layer needs A(8, 64) B(64, 8)",
    ),
    "training_step": ("step 1: 400 tokens in 0.10 s, loss 1.1950, gradient norm 0", ""),
    "first_loss": ("10.8027 (1.00 x ln(49152))", ""),
    "checkpoint_saves": ("adapter_model.safetensors: readable safetensors, 7 tensors, 1,000 bytes", "/ckpt"),
    "checkpoint_loads": (
        "max |logit diff| 1.00e-01; the adapter moves the logits by up to 0.5",
        "reloaded with peft.PeftModel.from_pretrained",
    ),
    "loss_decreases": (
        "held-out loss 1.0950 -> 1.0950 (x1.000, 0.0 standard errors; n=20) after 100 steps",
        "training loss: first step 1.1950, last 0.7000",
    ),
    "gradient_norms": (
        "pre-clip min 0.5, median 1.25, max 2; clipped to 1 on 50/100 steps",
        "step 1: norm 2 but 2 after clipping",
    ),
    "lr_schedule": (
        "1/100 steps match (linear, 5 warmup steps, peak 0.001)",
        "step 1: lr 0.0002, transformers gives 0.0",
    ),
    "epochs_complete": (
        "2/2 epochs; steps per epoch [50, 49, 1]; target tokens per epoch [1500, 1470, 30]",
        "epoch 2: 49 steps, 1470 target tokens",
    ),
    "adapter_config": (
        "parsed by peft.LoraConfig.from_pretrained; r=16, lora_alpha=16, task_type='CAUSAL_LM'",
        "r: 16, trained with 8",
    ),
    "generation": ("held-out exact match 0% -> 40% (+40 points; n=10)", "after, per family: sort_numbers 40%"),
    "forgetting_guard": ("perplexity 16.00 -> 25.00 (x1.56)", ""),
}


@pytest.mark.parametrize("check_id", list(BROKEN))
def test_each_criterion_fails_on_the_fault_it_exists_to_catch(check_id):
    broken = BROKEN[check_id](good())
    spec = next(s for s in CHECKS if s.id == check_id)
    criterion = judge_one(spec, broken, T)
    assert criterion.status == FAIL
    # The report says what was measured and where it broke, not only FAIL.
    assert (criterion.measured, criterion.detail) == BROKEN_REPORT[check_id]
    others = {c.id: c.status for c in judge(broken, T) if c.id != check_id}
    assert FAIL not in others.values() or check_id in ("first_loss", "training_step", "loss_decreases"), others


# ---------------------------------------------------------------- the checks one by one


def test_model_loads_fails_on_unexpected_and_mismatched_keys_too():
    assert status(replace(good(), "load", unexpected_keys=["lm_head.bias"]), "model_loads") == FAIL
    assert status(replace(good(), "load", mismatched_keys=["model.embed_tokens.weight"]), "model_loads") == FAIL


def test_model_loads_names_the_random_init_stand_in():
    spec = CHECKS[0]
    criterion = judge_one(spec, replace(good(), "load", random_init=True), T)
    assert criterion.status == PASS and "random init stand-in" in criterion.measured


def test_tokenizer_with_no_tokens_fails():
    assert status(replace(good(), "tokenizer", num_tokens=0, decoded="Hello — world"), "tokenizer_roundtrip") == FAIL


def test_forward_with_the_wrong_vocab_fails():
    assert status(replace(good(), "forward", shape=(1, 5, 32000)), "forward_logits") == FAIL


def test_adapter_dimensions_fail_when_model_info_mispredicts_the_layer():
    wrong = layers(3) + [LoraLayer("x.q_proj", (8, 64), (64, 8), 64, 64, 64, 128)]
    assert status(replace(good(), "adapter", layers=wrong), "adapter_dimensions") == FAIL


def test_adapter_dimensions_fail_when_a_layer_is_missing():
    assert status(replace(good(), "adapter", layers=layers(3)), "adapter_dimensions") == FAIL


def test_adapter_checks_skip_for_a_full_fine_tune():
    full = replace(good(), "adapter", kind="none", layers=[])
    full.adapter_kind = "none"
    assert status(full, "adapter_dimensions") == SKIPPED
    assert status(full, "adapter_config") == SKIPPED


def test_training_step_with_a_nonfinite_loss_fails():
    e = good()
    e = replace(e, "training", steps=[dataclasses.replace(e.training.steps[0], loss=math.nan)] + e.training.steps[1:])
    assert status(e, "training_step") == FAIL


@pytest.mark.parametrize(("loss", "expected"), [(0.5, PASS), (0.6 * math.log(VOCAB) + 0.01, FAIL), (math.inf, FAIL)])
def test_first_loss_of_a_pretrained_model_must_be_well_below_ln_vocab(loss, expected):
    e = good()
    e = replace(e, "training", steps=[dataclasses.replace(e.training.steps[0], loss=loss)] + e.training.steps[1:])
    assert status(e, "first_loss") == expected


@pytest.mark.parametrize(("loss", "expected"), [(10.4, PASS), (math.log(32000), PASS), (5.0, FAIL), (12.0, FAIL)])
def test_first_loss_of_a_random_init_model_must_be_near_ln_vocab(loss, expected):
    e = good()
    e = replace(e, "load", random_init=True)
    e = replace(
        e,
        "training",
        vocab_size=32000,
        steps=[dataclasses.replace(e.training.steps[0], loss=loss)] + e.training.steps[1:],
    )
    assert status(e, "first_loss") == expected


def test_checkpoint_saves_fails_on_an_unreadable_file():
    assert status(replace(good(), "saved", readable=False), "checkpoint_saves") == FAIL


@pytest.mark.parametrize(
    ("diff", "kind", "expected"),
    [(9e-5, "lora", PASS), (2e-4, "lora", FAIL), (9e-4, "qlora", PASS), (2e-3, "qlora", FAIL)],
)
def test_reload_tolerance_depends_on_the_adapter(diff, kind, expected):
    e = replace(good(), "reload", max_logit_diff=diff)
    e.adapter_kind = kind
    assert status(e, "checkpoint_loads") == expected


def test_loss_decreases_needs_a_drop_beyond_noise():
    # The mean falls by 10%, but half the examples got worse: not a real improvement.
    before = HeldOutLoss([10.0] * 20, [10] * 20)
    after = HeldOutLoss([5.0, 14.0] * 10, [10] * 20)
    relative, z = paired_drop(before, after)
    assert relative == pytest.approx(0.05) and z < 3
    e = replace(replace(good(), "before", held_out=before), "after", held_out=after)
    assert status(e, "loss_decreases", dataclasses.replace(T, loss_decrease_ratio=0.99)) == FAIL


def test_loss_decreases_from_random_init_asks_a_significant_drop_not_a_ratio():
    small = replace(replace(good(), "load", random_init=True), "after", held_out=held_out(0.99))
    assert status(small, "loss_decreases") == PASS
    assert status(replace(small, "after", held_out=held_out(1.0)), "loss_decreases") == FAIL
    assert (
        status(replace(replace(good(), "load", random_init=False), "after", held_out=held_out(0.99)), "loss_decreases")
        == FAIL
    )


def test_loss_decreases_needs_the_minimum_number_of_steps():
    assert status(replace(good(), "training", steps=steps(99)), "loss_decreases") == FAIL


def test_paired_drop_of_an_unchanged_model_is_zero():
    assert paired_drop(held_out(1.0), held_out(1.0)) == (0.0, 0.0)


def test_gradient_norms_fail_when_they_explode_or_vanish():
    e = good()
    exploding = [dataclasses.replace(s, grad_norm=500.0, clipped_norm=1.0) for s in e.training.steps]
    assert status(replace(e, "training", steps=exploding), "gradient_norms") == FAIL
    vanishing = [dataclasses.replace(s, grad_norm=0.0, clipped_norm=0.0) for s in e.training.steps]
    assert status(replace(e, "training", steps=vanishing), "gradient_norms") == FAIL
    nan = [dataclasses.replace(s, grad_norm=math.nan) for s in e.training.steps]
    assert status(replace(e, "training", steps=nan), "gradient_norms") == FAIL


def test_gradient_norms_fail_when_an_unclipped_norm_was_changed():
    e = good()
    scaled = [dataclasses.replace(s, clipped_norm=s.clipped_norm / 2) for s in e.training.steps]
    assert status(replace(e, "training", steps=scaled), "gradient_norms") == FAIL


def _clipped_to(e, norm_after):
    """Every step clipped: pre-clip norm 2, and the given norm after clipping to 1."""
    return [dataclasses.replace(s, grad_norm=2.0, clipped_norm=norm_after) for s in e.training.steps]


@pytest.mark.parametrize(
    ("dtype", "norm_after", "expected"),
    [
        ("float32", 0.9995, PASS),  # within 1e-3
        ("float32", 0.998, FAIL),  # what TRL's bfloat16 QLoRA gives: too far for float32 gradients
        ("bfloat16", 0.998, PASS),  # within bfloat16's epsilon, 2^-7
        ("bfloat16", 0.99, FAIL),  # beyond bfloat16 rounding: clipping did not happen as configured
    ],
)
def test_gradient_norms_allow_the_rounding_of_the_gradient_dtype(dtype, norm_after, expected):
    e = good()
    clipped = replace(replace(e, "training", steps=_clipped_to(e, norm_after)), "training", trainable_dtype=dtype)
    assert clipped.training.max_grad_norm == 1.0
    assert status(clipped, "gradient_norms") == expected


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("linear", [0.0, 0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]),
        ("cosine", [0.0, 0.25, 0.5, 0.75] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]),
        ("constant", [0.0, 0.25, 0.5, 0.75] + [1.0] * 6),
    ],
)
def test_reference_learning_rates_are_transformers_schedules(kind, expected):
    assert reference_learning_rates(10, 4, kind, 1.0) == pytest.approx(expected)


def test_lr_schedule_fails_on_the_old_warmup_convention():
    # (step + 1) / warmup: the first step already learns; transformers starts at 0.
    old = [
        dataclasses.replace(s, lr=PEAK * min(1.0, s.step / WARMUP)) if s.step <= WARMUP else s
        for s in good().training.steps
    ]
    assert status(replace(good(), "training", steps=old), "lr_schedule") == FAIL


def test_lr_schedule_fails_with_no_steps():
    assert status(replace(good(), "training", steps=[]), "lr_schedule") == FAIL


def test_epochs_complete_fails_when_an_epoch_drops_examples():
    e = good()
    short = [dataclasses.replace(s, target_tokens=29) if s.step == 3 else s for s in e.training.steps]
    assert status(replace(e, "training", steps=short), "epochs_complete") == FAIL


def test_epochs_complete_fails_when_epochs_have_different_step_counts():
    e = good()
    uneven = [dataclasses.replace(s, epoch=0 if s.step <= 51 else 1) for s in e.training.steps]
    assert status(replace(e, "training", steps=uneven), "epochs_complete") == FAIL


def test_epochs_complete_skips_a_single_epoch_run_with_the_reason():
    e = replace(good(), "training", epochs_planned=1, epochs_completed=1, steps_per_epoch=100)
    spec = next(s for s in CHECKS if s.id == "epochs_complete")
    criterion = judge_one(spec, e, T)
    assert criterion.status == SKIPPED and "training.epochs >= 2" in criterion.detail


def test_adapter_config_fails_when_peft_cannot_parse_it_or_a_key_is_missing():
    e = good()
    assert status(replace(e, "reload", peft_parse_error="TypeError: bad"), "adapter_config") == FAIL
    config = dict(e.reload.adapter_config)
    del config["task_type"]
    assert status(replace(e, "reload", adapter_config=config), "adapter_config") == FAIL
    other = e.reload.adapter_config | {"target_modules": ["q_proj", "v_proj"]}
    assert status(replace(e, "reload", adapter_config=other), "adapter_config") == FAIL


def test_adapter_config_accepts_a_reordered_target_list_and_integral_alpha():
    e = good()
    config = e.reload.adapter_config | {"lora_alpha": 16, "target_modules": ["q_proj"]}
    assert (
        status(
            replace(e, "reload", adapter_config=config, expected_adapter_config=config | {"lora_alpha": 16.0}),
            "adapter_config",
        )
        == PASS
    )


def free_text(before_loss: float, after_loss: float, text: str) -> Evidence:
    e = good()
    e.data_kind = "free_text"
    replies = [Answer("Give three tips.", "Eat well.", text, True) for _ in range(10)]
    e = replace(e, "before", held_out=held_out(before_loss), answers=replies)
    return replace(e, "after", held_out=held_out(after_loss), answers=replies)


def test_free_text_generation_needs_coherent_answers_and_a_gain():
    assert status(free_text(1.0, 0.9, "Eat vegetables, sleep well and move every day."), "generation") == PASS
    assert status(free_text(1.0, 1.0, "Eat vegetables, sleep well and move every day."), "generation") == FAIL
    assert status(free_text(1.0, 0.9, "the the the"), "generation") == FAIL


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris.", True),
        ("24, 54, 74, 86", True),
        ("The capital of France is Paris.", True),
        ("", False),
        ("   ", False),
        ("the the the", False),
        ("yes yes", True),
        ("!!!!!!!!", False),
        ("a b a b a b a b a b", False),
        ("\x00\x01\x02 word", False),
        ("abcd efgh ijkl mnop\n", True),  # 19 of 20 printable: exactly 95% is enough
        ("abcd efgh ijkl mno\n\n", False),  # 18 of 20
        ("ab!! cd!!", True),  # exactly half of the visible characters alphanumeric is enough
        ("ab!! cd!!!", False),  # 4 of 9
        ("... ... ab cd", False),  # the spaces between words do not count as visible
        ("!!!! a", False),
        ("one two one two", True),  # exactly half the words distinct is enough
        ("one two one two one", False),  # 2 of 5
        ("I am a cat. I am a cat.", True),  # a phrase said twice: 4 of 8
        ("I am a cat. I am a cat. I am a cat.", False),  # thrice: 4 of 12
        ("to be or not to be", True),  # 4 of 6
        ("to be or not to be to be or not to be", False),  # 4 of 12
    ],
)
def test_is_coherent(text, expected):
    assert is_coherent(text) is expected


@pytest.mark.parametrize("check_id", ["generation", "forgetting_guard"])
def test_random_init_skips_meaningless_criteria_with_the_reason(check_id):
    e = replace(good(), "load", random_init=True)
    spec = next(s for s in CHECKS if s.id == check_id)
    criterion = judge_one(spec, e, T)
    assert criterion.status == SKIPPED and criterion.detail.startswith("random init")


def test_a_failed_stage_fails_the_criteria_it_owns_and_skips_the_rest():
    e = good()
    e.training = None
    e.errors["training"] = "step 3: loss is nan; stopped"
    got = {c.id: c for c in judge(e, T)}
    assert got["training_step"].status == FAIL and "loss is nan" in got["training_step"].measured
    assert got["first_loss"].status == FAIL
    assert got["lr_schedule"].status == SKIPPED and got["lr_schedule"].detail == "needs training, which failed"


def test_absent_evidence_skips_with_the_collectors_reason():
    e = good()
    e.after = None
    e.absent["after"] = "measured on rank 0"
    got = {c.id: c for c in judge(e, T)}
    assert got["forgetting_guard"].status == SKIPPED and got["forgetting_guard"].detail == "measured on rank 0"


# ---------------------------------------------------------------- the opt-in oracle criterion

ORACLE = dataclasses.replace(T, oracle=True)


def with_oracle(evidence: Evidence, **changes) -> Evidence:
    """``evidence`` plus a healthy oracle comparison (differences of a CPU float32 run), then ``changes``."""
    harness = [s.loss for s in evidence.training.steps]
    oracle = OracleEvidence(harness, [x * (1 + 1e-7) for x in harness], 0.0, 0.14, 3.0)
    copy = dataclasses.replace(evidence)
    copy.oracle = dataclasses.replace(oracle, **changes)
    return copy


def test_the_oracle_criterion_is_left_out_unless_the_config_asks_for_it():
    assert [c.id for c in judge(with_oracle(good()), T)] == [s.id for s in CHECKS if not s.requested_by]
    asked = judge(with_oracle(good()), ORACLE)
    oracle_asked = [s.id for s in CHECKS if s.requested_by in ("", "oracle")]
    assert [c.id for c in asked] == oracle_asked and {c.status for c in asked} == {PASS}, asked


def test_oracle_parity_passes_within_tolerance():
    assert status(with_oracle(good()), "oracle_parity", ORACLE) == PASS


@pytest.mark.parametrize(
    "fault",
    [
        "one step off by 1e-3",
        "final weights off",
        "fewer steps",
        "nan loss",
        "no steps",
    ],
)
def test_oracle_parity_fails_when_the_runs_disagree(fault):
    e = with_oracle(good())
    theirs = list(e.oracle.oracle_losses)
    changes = {
        "one step off by 1e-3": {"oracle_losses": theirs[:40] + [theirs[40] * 1.001] + theirs[41:]},
        "final weights off": {"max_weight_diff": 1e-2},
        "fewer steps": {"oracle_losses": theirs[:-1]},
        "nan loss": {"oracle_losses": theirs[:-1] + [math.nan]},
        "no steps": {"harness_losses": [], "oracle_losses": []},
    }[fault]
    assert status(with_oracle(good(), **changes), "oracle_parity", ORACLE) == FAIL


def test_oracle_parity_names_the_first_step_that_differs():
    theirs = [s.loss for s in good().training.steps]
    theirs[6] *= 1.01
    oracle = next(s for s in CHECKS if s.id == "oracle_parity")
    criterion = judge_one(oracle, with_oracle(good(), oracle_losses=theirs), ORACLE)
    assert criterion.status == FAIL and criterion.detail.startswith("step 7: "), criterion


def test_an_oracle_that_failed_fails_and_one_not_run_is_skipped_with_the_reason():
    e = good()
    e.errors["oracle"] = "TrainingError: the two runs train different weights"
    failed = {c.id: c for c in judge(e, ORACLE)}["oracle_parity"]
    assert failed.status == FAIL and "different weights" in failed.measured
    e = good()
    e.absent["oracle"] = "compares single-process runs; this one has 2 ranks"
    skipped = {c.id: c for c in judge(e, ORACLE)}["oracle_parity"]
    assert skipped.status == SKIPPED and "single-process" in skipped.detail


def test_healthy_evidence_is_reported_with_its_measured_values_and_thresholds():
    assert [(c.id, c.measured, c.threshold, c.detail) for c in judge(good(), T)] == HEALTHY_REPORT


@pytest.mark.parametrize("spec", [s for s in CHECKS if s.owns], ids=lambda s: s.id)
def test_a_failed_stage_fails_the_criterion_that_owns_its_evidence(spec):
    evidence = good()
    evidence.oracle = None
    name = spec.owns[0]
    setattr(evidence, name, None)
    evidence.errors[name] = "boom: one line"
    criterion = judge_one(spec, evidence, T)
    assert (criterion.status, criterion.measured) == (FAIL, "error: boom: one line")


@pytest.mark.parametrize("spec", [s for s in CHECKS if not s.owns], ids=lambda s: s.id)
def test_a_failed_stage_only_skips_the_criteria_that_merely_need_it(spec):
    evidence = good()
    evidence.training = None
    evidence.errors["training"] = "boom"
    criterion = judge_one(spec, evidence, T)
    assert (criterion.status, criterion.detail) == (SKIPPED, "needs training, which failed")


# ---------------------------------------------------------------- the opt-in comparisons, to the letter

ORACLE_THRESHOLD = (
    "the same steps; every step's loss within 1e-05 relative, the final weights within 0.001 of their largest"
)


def judged(evidence: Evidence, check_id: str, thresholds: ValidationSection = T):
    """One check's criterion, judged the way the report judges it."""
    return judge_one(next(s for s in CHECKS if s.id == check_id), evidence, thresholds)


def oracle_verdict(theirs, *, weight_diff=1e-7, weight_scale=0.5, tolerance=1e-5, ours=(2.0, 1.0, 0.5)):
    evidence = Evidence(oracle=OracleEvidence(list(ours), list(theirs), weight_diff, weight_scale, 3.0))
    c = judged(evidence, "oracle_parity", dataclasses.replace(ORACLE, oracle_tolerance=tolerance))
    return c.status, c.measured, c.threshold, c.detail


@pytest.mark.parametrize(
    ("theirs", "expected"),
    [
        (
            [2.0, 1.0, 0.5],
            (
                PASS,
                "3 steps; max relative loss difference 0.0e+00; "
                "final weights max |diff| 1.0e-07 (2.0e-07 of max |w| 0.5)",
                ORACLE_THRESHOLD,
                "transformers' Trainer took 3 s",
            ),
        ),
        (
            [2.0, 1.0, 0.4],
            (
                FAIL,
                "3 steps; max relative loss difference 2.5e-01; "
                "final weights max |diff| 1.0e-07 (2.0e-07 of max |w| 0.5)",
                ORACLE_THRESHOLD,
                "step 3: harness 0.5, transformers 0.4",
            ),
        ),
        (
            [2.0, 1.0],
            (
                FAIL,
                "3 steps; max relative loss difference 0.0e+00; "
                "final weights max |diff| 1.0e-07 (2.0e-07 of max |w| 0.5)",
                ORACLE_THRESHOLD,
                "the harness ran 3 steps, transformers' Trainer 2",
            ),
        ),
    ],
    ids=["agree", "last step off", "one step fewer"],
)
def test_oracle_parity_reports_its_measurements_to_the_letter(theirs, expected):
    assert oracle_verdict(theirs) == expected


def test_oracle_parity_is_relative_to_losses_and_weights_below_one():
    """A loss of 0.1 off by 5e-6 is 5e-5 relative; weights of scale 0.5 off by 7.5e-4 are 1.5e-3."""
    assert oracle_verdict([2.0, 1.0, 0.1 - 5e-6], ours=(2.0, 1.0, 0.1))[0] == FAIL
    assert oracle_verdict([2.0, 1.0, 0.5], weight_diff=7.5e-4)[0] == FAIL
    assert oracle_verdict([2.0, 1.0, 0.5], weight_diff=2.5e-4)[0] == PASS  # 5e-4 of the largest


def test_oracle_parity_passes_a_difference_exactly_at_its_tolerances():
    tolerance = 2**-10  # exact in binary: 1 + tolerance - 1 == tolerance
    at_loss = oracle_verdict([1.0, 1.0, 1.0], ours=(1.0, 1.0, 1.0 + tolerance), tolerance=tolerance)
    assert at_loss[0] == PASS, at_loss
    at_weights = oracle_verdict([2.0, 1.0, 0.5], weight_diff=100 * tolerance * 0.5, tolerance=tolerance)
    assert at_weights[0] == PASS, at_weights


ENGINES_THRESHOLD = "the same steps; every step's loss within 0.001 relative (summation order differs)"


def engines_verdict(ours, theirs, tolerance=1e-3):
    evidence = Evidence(engines=EnginesEvidence(list(ours), list(theirs), False, 40.0))
    c = judged(evidence, "engines_agree", dataclasses.replace(T, compare_engines=True, engines_tolerance=tolerance))
    return c.status, c.measured, c.threshold, c.detail


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        (
            [2.0, 1.0, 0.5],
            [2.0, 1.0, 0.5],
            (
                PASS,
                "3 steps; step 1: 0.0e+00; max relative loss difference 0.0e+00",
                ENGINES_THRESHOLD,
                "TRL's SFTTrainer and the harness loop; the second engine took 40 s",
            ),
        ),
        (
            [2.0, 1.0, 0.5],
            [2.0, 1.0, 0.4],
            (
                FAIL,
                "3 steps; step 1: 0.0e+00; max relative loss difference 2.5e-01",
                ENGINES_THRESHOLD,
                "step 3: harness 0.5, TRL 0.4",
            ),
        ),
        (
            [],
            [],
            (FAIL, "0 steps; max relative loss difference nan", ENGINES_THRESHOLD, "the harness ran 0 steps, TRL 0"),
        ),
    ],
    ids=["agree", "last step off", "no steps"],
)
def test_engines_agree_reports_its_measurements_to_the_letter(ours, theirs, expected):
    assert engines_verdict(ours, theirs) == expected


def test_engines_agree_is_relative_to_losses_below_one_and_passes_exactly_at_its_tolerance():
    assert engines_verdict([2.0, 0.1], [2.0, 0.1 - 5e-4])[0] == FAIL  # 5e-3 relative
    tolerance = 2**-10
    assert engines_verdict([1.0, 1.0 + tolerance], [1.0, 1.0], tolerance)[0] == PASS


def test_a_held_out_drop_without_spread_is_infinitely_many_standard_errors():
    """Every example's loss halved: the per-example drops have no spread."""
    e = replace(good(), "before", held_out=HeldOutLoss([100.0] * 20, [10] * 20))
    e = replace(e, "after", held_out=HeldOutLoss([50.0] * 20, [10] * 20))
    criterion = judged(e, "loss_decreases")
    assert criterion.status == PASS
    assert criterion.measured == "held-out loss 10.0000 -> 5.0000 (x0.500, inf standard errors; n=20) after 100 steps"


@pytest.mark.parametrize(
    ("decoded", "where"),
    [("Hello world, and more", 11), ("Hello", 5), ("Hellp world", 4)],
    ids=["longer", "cut short", "one character"],
)
def test_a_tokenizer_round_trip_names_the_first_character_that_differs(decoded, where):
    e = replace(good(), "tokenizer", text="Hello world", decoded=decoded)
    criterion = judged(e, "tokenizer_roundtrip")
    assert (criterion.status, criterion.detail) == (FAIL, f"first difference at character {where}")


def test_task_answers_are_reported_per_family_in_the_order_first_seen():
    replies = answers(9) + [Answer("2 + 2", "4", "5", True, False, "add"), Answer("1 + 1", "2", "2", True, True, "add")]
    e = replace(good(), "after", answers=replies)
    criterion = judged(e, "generation")
    assert criterion.detail == "after, per family: sort_numbers 90%, add 50%"


def test_a_run_without_a_completed_step_fails_the_training_step():
    criterion = judged(replace(good(), "training", steps=[]), "training_step")
    assert (criterion.status, criterion.measured, criterion.threshold) == (
        FAIL,
        "no step completed",
        "completes with a finite loss and a non-zero gradient reaching the trainable weights",
    )


@pytest.mark.parametrize("side", ["before", "after"])
def test_a_perplexity_not_measured_skips_the_forgetting_guard_naming_the_side(side):
    e = replace(good(), side, reference_perplexity=None)
    criterion = judged(e, "forgetting_guard")
    assert (criterion.status, criterion.detail) == (SKIPPED, f"not measured ({side})")


def test_the_forgetting_guard_passes_a_perplexity_ratio_exactly_at_its_bound():
    e = replace(replace(good(), "before", reference_perplexity=16.0), "after", reference_perplexity=24.0)
    assert status(e, "forgetting_guard") == PASS  # x1.5


# ---------------------------------------------------------------- edges, found by mutation testing


def criterion(evidence: Evidence, check_id: str, thresholds: ValidationSection = T):
    c = judged(evidence, check_id, thresholds)
    return c.status, c.measured, c.threshold, c.detail


def full_fine_tune() -> Evidence:
    e = replace(good(), "adapter", kind="none", layers=[], target_modules=[], describe="full fine-tune")
    e.adapter_kind = "none"
    return e


def test_a_full_fine_tune_skips_the_adapter_criteria_saying_why():
    assert criterion(full_fine_tune(), "adapter_dimensions") == (SKIPPED, "", "", "full fine-tune: no LoRA layers")
    assert criterion(full_fine_tune(), "adapter_config") == (SKIPPED, "", "", "full fine-tune: no adapter")


def test_a_full_fine_tune_checkpoint_must_hold_weights():
    e = replace(full_fine_tune(), "saved", file="model.safetensors", tensor_names=["lm_head.weight"])
    assert criterion(e, "checkpoint_saves") == (
        PASS,
        "model.safetensors: readable safetensors, 1 tensors, 1,000 bytes",
        "a readable safetensors file holding every model weight",
        "/ckpt",
    )
    assert criterion(replace(e, "saved", tensor_names=[]), "checkpoint_saves")[0] == FAIL


def test_a_full_fine_tune_reloads_with_from_pretrained():
    e = replace(full_fine_tune(), "reload", adapter_effect=None, max_logit_diff=1e-4)
    assert criterion(e, "checkpoint_loads") == (
        PASS,  # exactly at the tolerance
        "max |logit diff| 1.00e-04",
        "<= 0.0001",
        "reloaded with from_pretrained",
    )


def test_an_unreadable_checkpoint_says_so():
    status_, measured, _, _ = criterion(replace(good(), "saved", readable=False), "checkpoint_saves")
    assert (status_, measured) == (FAIL, "adapter_model.safetensors: unreadable safetensors, 8 tensors, 1,000 bytes")


@pytest.mark.parametrize(
    "names",
    [
        lambda names: names[1:],  # layer 0 has lora_B only
        lambda names: names + ["base_model.model.lm_head.weight"],  # every LoRA pair and one tensor more
    ],
    ids=["one matrix missing", "one tensor too many"],
)
def test_an_adapter_checkpoint_holds_exactly_both_matrices_of_every_layer(names):
    e = good()
    assert criterion(replace(e, "saved", tensor_names=names(e.saved.tensor_names)), "checkpoint_saves")[0] == FAIL


@pytest.mark.parametrize(("piece", "check_id"), [("adapter", "checkpoint_saves"), ("adapter", "adapter_dimensions")])
def test_a_criterion_without_its_evidence_names_what_was_not_measured(piece, check_id):
    e = good()
    setattr(e, piece, None)
    assert criterion(e, check_id) == (SKIPPED, "", "", f"not measured ({piece})")


@pytest.mark.parametrize("field", ["adapter_config", "expected_adapter_config"])
def test_an_adapter_config_not_read_is_not_measured(field):
    assert criterion(replace(good(), "reload", **{field: None}), "adapter_config") == (
        SKIPPED,
        "",
        "",
        "not measured (reload)",
    )


def test_an_adapter_config_that_peft_cannot_parse_reports_peft_first():
    written = {k: v for k, v in good().reload.adapter_config.items() if k not in ("r", "peft_type")}
    e = replace(good(), "reload", adapter_config=written, peft_parse_error="TypeError: r")
    assert criterion(e, "adapter_config")[:2] == (FAIL, "not parsed")
    assert criterion(e, "adapter_config")[3] == "peft.LoraConfig.from_pretrained: TypeError: r"
    parsed = replace(good(), "reload", adapter_config=written)
    assert criterion(parsed, "adapter_config")[3] == "missing peft_type, r"


def test_a_reload_without_an_adapter_effect_reports_the_difference_alone():
    e = replace(good(), "reload", adapter_effect=None)
    assert criterion(e, "checkpoint_loads")[:2] == (PASS, "max |logit diff| 0.00e+00")


def test_a_one_token_round_trip_passes():
    assert status(replace(good(), "tokenizer", text="a", decoded="a", num_tokens=1), "tokenizer_roundtrip") == PASS


def test_adapter_dimensions_need_at_least_one_layer_and_name_a_modelinfo_mismatch():
    one = replace(good(), "adapter", num_hidden_layers=1, layers=layers(1))
    assert status(one, "adapter_dimensions") == PASS
    none = replace(good(), "adapter", num_hidden_layers=0, layers=[])
    assert status(none, "adapter_dimensions") == FAIL
    mispredicted = [dataclasses.replace(layer, predicted_out=32) for layer in layers()]
    e = replace(good(), "adapter", layers=mispredicted)
    assert criterion(e, "adapter_dimensions")[::3] == (
        FAIL,
        "base_model.model.model.layers.0.self_attn.q_proj: ModelInfo predicted 64->32, the layer is 64->64",
    )


@pytest.mark.parametrize(("tokens", "norm", "expected"), [(1, 0.5, PASS), (0, 0.5, FAIL), (1, 0.0, FAIL)])
def test_the_first_step_needs_a_token_and_a_gradient(tokens, norm, expected):
    e = good()
    first = dataclasses.replace(e.training.steps[0], tokens=tokens, grad_norm=norm)
    assert status(replace(e, "training", steps=[first, *e.training.steps[1:]]), "training_step") == expected


def test_one_planned_epoch_skips_the_epoch_criterion_saying_what_it_needs():
    e = replace(good(), "training", epochs_planned=1)
    assert criterion(e, "epochs_complete")[3] == (
        "1 epoch planned: epoch boundaries need training.epochs >= 2 (the default validation trains 2)"
    )


@pytest.mark.parametrize(
    ("broken", "what"),
    [
        (lambda e: setattr(e, "after", None), "after"),
        (lambda e: setattr(e, "before", replace(e, "before", answers=None).before), "answers"),
        (lambda e: setattr(e, "after", replace(e, "after", answers=None).after), "answers"),
    ],
    ids=["no after", "no answers before", "no answers after"],
)
def test_generation_without_its_evidence_names_what_was_not_measured(broken, what):
    e = good()
    broken(e)
    assert criterion(e, "generation") == (SKIPPED, "", "", f"not measured ({what})")


def test_task_generation_reports_both_accuracies_and_passes_a_gain_exactly_at_its_bound():
    e = replace(replace(good(), "before", answers=answers(4)), "after", answers=answers(9))
    assert criterion(e, "generation")[:3] == (
        PASS,
        "held-out exact match 40% -> 90% (+50 points; n=10)",
        ">= +50 points",
    )
    e = replace(replace(good(), "before", answers=answers(5)), "after", answers=answers(9))
    assert criterion(e, "generation")[:2] == (FAIL, "held-out exact match 50% -> 90% (+40 points; n=10)")


def test_task_generation_on_one_answer():
    e = replace(replace(good(), "before", answers=answers(0, n=1)), "after", answers=answers(1, n=1))
    assert criterion(e, "generation")[:2] == (PASS, "held-out exact match 0% -> 100% (+100 points; n=1)")


def free_text_exactly_at_bounds(coherent: int, n: int = 5) -> Evidence:
    """Free-text answers, ``coherent`` of ``n`` coherent (two of them ending with EOS), and a held-out
    loss 50 -> 49 per token: exactly the 2% drop asked for."""
    e = good()
    e.data_kind = "free_text"
    fine, looping = "Eat vegetables and sleep well.", "the the the"
    replies = [Answer("Tips?", "Eat well.", fine if i < coherent else looping, i < 2) for i in range(n)]
    e = replace(e, "before", held_out=HeldOutLoss([500.0] * 10, [10] * 10), answers=replies[::-1][:n])
    return replace(e, "after", held_out=HeldOutLoss([490.0] * 10, [10] * 10), answers=replies)


def test_free_text_generation_to_the_letter_passes_exactly_at_its_bounds():
    assert criterion(free_text_exactly_at_bounds(4), "generation") == (
        PASS,
        "coherent answers 80% -> 80% (n=5, 2 ended with EOS); held-out response loss -2.0%",
        ">= 80% coherent; reference answers' loss down >= 2%",
        "free text has no exact answer: the model must answer coherently and prefer the held-out references more",
    )
    assert criterion(free_text_exactly_at_bounds(3), "generation")[:2] == (
        FAIL,
        "coherent answers 60% -> 60% (n=5, 2 ended with EOS); held-out response loss -2.0%",
    )


def test_free_text_generation_on_one_answer():
    assert criterion(free_text_exactly_at_bounds(1, n=1), "generation")[:2] == (
        PASS,
        "coherent answers 100% -> 100% (n=1, 1 ended with EOS); held-out response loss -2.0%",
    )


@pytest.mark.parametrize(
    ("check_id", "threshold"),
    [("first_loss", "a first loss"), ("gradient_norms", "norms of every step"), ("training_step", None)],
)
def test_no_completed_step_fails_the_step_criteria_in_their_words(check_id, threshold):
    got = criterion(replace(good(), "training", steps=[]), check_id)
    assert got[:2] == (FAIL, "no step completed") and (threshold is None or got[2] == threshold)


def test_no_completed_step_fails_the_loss_and_schedule_criteria():
    e = replace(good(), "training", steps=[])
    assert criterion(e, "loss_decreases")[::3] == (FAIL, "")
    assert criterion(e, "lr_schedule")[0] == FAIL


def test_a_pretrained_first_loss_exactly_at_its_bound_passes():
    t = dataclasses.replace(T, first_loss_max_fraction=0.5)
    e = good()
    first = dataclasses.replace(e.training.steps[0], loss=math.log(VOCAB) * 0.5)  # exact: a power of two
    assert criterion(replace(e, "training", steps=[first, *e.training.steps[1:]]), "first_loss", t)[0] == PASS


def test_a_random_init_first_loss_is_judged_around_ln_vocab_to_the_letter():
    e = good()
    e.load = dataclasses.replace(e.load, random_init=True)
    first = dataclasses.replace(e.training.steps[0], loss=math.log(VOCAB) * 0.5)
    e = replace(e, "training", steps=[first, *e.training.steps[1:]])
    assert criterion(e, "first_loss") == (
        FAIL,
        "5.4013 (0.50 x ln(49152))",
        "random init: within ±10% of ln(vocab) = 10.80",
        "",
    )
    at_bound = dataclasses.replace(T, random_init_first_loss_tolerance=0.5)  # |0.5 - 1| == 0.5 exactly
    assert criterion(e, "first_loss", at_bound)[0] == PASS


@pytest.mark.parametrize("missing", ["training", "after"])
def test_the_loss_criterion_without_its_evidence_names_what_was_not_measured(missing):
    e = good()
    setattr(e, missing, None)
    assert criterion(e, "loss_decreases")[::3] == (SKIPPED, f"not measured ({missing})")


def test_the_loss_criterion_passes_a_ratio_and_a_z_exactly_at_their_bounds():
    at_ratio = replace(replace(good(), "before", held_out=HeldOutLoss([200.0] * 10, [10] * 10)), "after", held_out=None)
    at_ratio = replace(at_ratio, "after", held_out=HeldOutLoss([190.0] * 10, [10] * 10))  # 20 -> 19: x0.95
    assert criterion(at_ratio, "loss_decreases")[0] == PASS
    at_z = replace(replace(good(), "before", held_out=HeldOutLoss([10.0, 10.0], [1, 1])), "after", held_out=None)
    at_z = replace(at_z, "after", held_out=HeldOutLoss([8.0, 9.0], [1, 1]))  # drops 2 and 1: z = 3.0
    assert criterion(at_z, "loss_decreases")[:2] == (
        PASS,
        "held-out loss 10.0000 -> 8.5000 (x0.850, 3.0 standard errors; n=2) after 100 steps",
    )


def test_a_random_init_loss_criterion_asks_no_ratio_and_says_so():
    e = good()
    e.load = dataclasses.replace(e.load, random_init=True)
    assert criterion(e, "loss_decreases")[2] == "random init: no ratio asked; >= 3 standard errors, over >= 100 steps"


def with_steps(e: Evidence, **changes_by_step) -> Evidence:
    """``e`` with the fields of step k changed as ``s<k>={...}`` says."""
    new = [dataclasses.replace(s, **changes_by_step.get(f"s{s.step}", {})) for s in e.training.steps]
    return replace(e, "training", steps=new)


def test_gradient_norms_exactly_at_their_bounds_pass_and_a_norm_at_the_limit_is_not_counted_as_clipped():
    e = with_steps(good(), s1={"grad_norm": 100.0, "clipped_norm": 1.0}, s2={"grad_norm": 1.0, "clipped_norm": 1.0})
    assert criterion(e, "gradient_norms")[:2] == (
        PASS,
        "pre-clip min 0.5, median 1.5, max 100; clipped to 1 on 50/100 steps",
    )
    tiny = dataclasses.replace(T, grad_norm_min=0.5)  # the median is exactly 0.5 when most norms are 0.5
    low = with_steps(good(), **{f"s{k}": {"grad_norm": 0.5, "clipped_norm": 0.5} for k in range(1, 52)})
    assert criterion(low, "gradient_norms", tiny)[0] == PASS


def test_a_vanishing_norm_reported_as_zero_after_clipping_is_clipping_done_right():
    e = with_steps(good(), s2={"grad_norm": 1e-13, "clipped_norm": 0.0})
    assert criterion(e, "gradient_norms")[0] == PASS


def test_a_non_finite_norm_has_no_median():
    e = with_steps(good(), s2={"grad_norm": math.nan, "clipped_norm": math.nan})
    status_, measured, _, _ = criterion(e, "gradient_norms")
    assert status_ == FAIL and "median nan" in measured


@pytest.mark.parametrize(
    ("dtype", "suffix"),
    [("float32", ""), ("bfloat16", " within 0.0078125 (bfloat16)"), ("float64", " within 0.001 (float64)")],
)
def test_clipping_is_judged_within_the_rounding_of_the_gradients_dtype(dtype, suffix):
    e = replace(good(), "training", trainable_dtype=dtype)
    assert criterion(e, "gradient_norms")[:3] == (
        PASS,
        "pre-clip min 0.5, median 1.25, max 2; clipped to 1 on 50/100 steps",
        "all finite, max <= 100, median >= 1e-06; after clipping = min(norm, 1)" + suffix,
    )


def test_the_schedule_allows_rounding_only():
    e = with_steps(good(), s1={"lr": 1e-13}, s10={"lr": linear_lr(10) * (1 + 1e-7)})  # step 1's lr is 0
    assert criterion(e, "lr_schedule")[0] == PASS
    off = with_steps(good(), s10={"lr": linear_lr(10) * (1 + 1e-5)})
    assert criterion(off, "lr_schedule")[0] == FAIL


def test_a_schedule_mismatch_names_the_reference_up_to_the_last_step_and_nothing_past_it():
    last = with_steps(good(), s100={"lr": 0.5})
    assert criterion(last, "lr_schedule")[3] == f"step 100: lr 0.5, transformers gives {linear_lr(100)}"
    e = good()
    past = dataclasses.replace(e.training.steps[-1], step=101, lr=0.5)
    beyond = replace(e, "training", steps=[*e.training.steps, past])
    assert criterion(beyond, "lr_schedule")[3] == "step 101: lr 0.5, transformers gives nothing (past the end)"


def test_a_criterion_carries_its_name_and_level():
    c = judge_one(CHECKS[0], good(), T)
    assert (c.id, c.name, c.level) == ("model_loads", "Model loads from the HF cache", "minimum")


def test_an_adapter_checkpoint_with_the_right_count_but_a_layer_missing_a_matrix_fails():
    e = good()
    names = list(e.saved.tensor_names)
    names[1] = "base_model.model.lm_head.weight"  # layer 0's lora_B replaced: still 8 tensors
    assert criterion(replace(e, "saved", tensor_names=names), "checkpoint_saves")[0] == FAIL


def test_task_generation_states_its_threshold_and_counts_one_answer_before():
    t = dataclasses.replace(T, min_accuracy_gain=0.6)
    e = replace(replace(good(), "before", answers=answers(1, n=1)), "after", answers=answers(1, n=1))
    assert criterion(e, "generation", t)[:3] == (
        FAIL,
        "held-out exact match 100% -> 100% (+0 points; n=1)",
        ">= +60 points",
    )
