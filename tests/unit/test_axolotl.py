"""axolotl-style flat configs map onto the same schema; unsupported keys are listed, never dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.axolotl import from_axolotl
from harness.cli import main
from harness.config import load_config
from harness.errors import ConfigError

AXOLOTL = Path(__file__).resolve().parents[2] / "configs" / "axolotl"


def test_smollm2_lora_file_maps_every_key():
    config = load_config(AXOLOTL / "smollm2_lora.yml")
    assert (config.base_model, config.adapter, config.seed) == ("HuggingFaceTB/SmolLM2-135M", "lora", 42)
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (16, 32.0, 0.0)
    assert config.lora.target_modules == ["all-linear"]
    assert (config.dataset.path, config.dataset.type, config.dataset.max_length) == ("builtin:tasks", "alpaca", 128)
    assert config.dataset.train_split == pytest.approx(0.9) and config.dataset.train_on_inputs is False
    t = config.training
    assert (t.batch_size, t.gradient_accumulation_steps, t.epochs, t.learning_rate) == (4, 1, 2, 1e-3)
    assert (t.lr_scheduler, t.warmup_ratio, t.packing, t.gradient_checkpointing) == ("linear", 0.05, False, False)
    assert (t.logging_steps, t.save_steps, t.eval_steps) == (10, 60, 20)
    assert Path(config.output_dir).is_absolute()


def test_ignored_keys_are_listed():
    config = load_config(AXOLOTL / "smollm2_lora.yml")
    assert config.ignored_keys == [
        "model_type (no effect here)",
        "tokenizer_type (no effect here)",
        "strict (no effect here)",
        "dataset_prepared_path (no effect here)",
        "wandb_project (not supported)",
        "bf16 (no effect here)",
    ]


def test_qlora_file_maps_quantization_and_warmup_steps():
    config = load_config(AXOLOTL / "tinyllama_qlora.yml")
    assert config.adapter == "qlora" and config.quantization.bits == 4
    assert (config.quantization.quant_type, config.quantization.double_quant) == ("nf4", True)
    assert (config.training.warmup_steps, config.training.lr_scheduler, config.training.packing) == (10, "cosine", True)
    assert "optimizer paged_adamw_8bit (changed: runs as torch AdamW with fp32 states)" in config.ignored_keys


@pytest.mark.parametrize(
    ("text", "implementation"),
    [
        ("flash_attention: true\n", "flash_attention_2"),
        ("flex_attention: true\n", "flex_attention"),
        ("sdp_attention: true\n", "sdpa"),
        ("flash_attention: false\n", "sdpa"),
        ("flash_attention: true\nattn_implementation: eager\n", "eager"),
    ],
)
def test_attention_switches_map_to_attn_implementation(tmp_path, text, implementation):
    path = tmp_path / "a.yml"
    path.write_text("lora_r: 8\n" + text)
    config = load_config(path)
    assert config.model.attn_implementation == implementation
    assert not [key for key in config.ignored_keys if "attention" in key]


def test_lora_on_a_4bit_base_is_qlora(tmp_path):
    path = tmp_path / "a.yml"
    path.write_text("base_model: x/y\nadapter: lora\nload_in_4bit: true\nlora_r: 8\n")
    assert load_config(path).adapter == "qlora"


def test_no_adapter_is_a_full_fine_tune(tmp_path):
    path = tmp_path / "a.yml"
    path.write_text("base_model: x/y\nmicro_batch_size: 2\n")
    assert load_config(path).adapter == "none"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("datasets: [{path: a.jsonl}, {path: b.jsonl}]\n", "datasets: 2 entries; the harness trains on one dataset"),
        ("datasets: nope\n", "datasets: must be a list of {path, type} entries"),
        ("val_set_size: 200\nlora_r: 8\n", "val_set_size: must be a fraction in [0, 1), got 200"),
        (
            "lr_scheduler: one_cycle\nlora_r: 8\n",
            "lr_scheduler: must be one of cosine, linear, constant, got 'one_cycle'",
        ),
        ("lora_r: 0\n", "lora.r: must be an integer > 0, got 0"),
    ],
)
def test_bad_axolotl_values_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "a.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {message}"


def test_check_config_lists_ignored_keys_once(capsys):
    assert main(["check-config", str(AXOLOTL / "smollm2_lora.yml")]) == 0
    err = capsys.readouterr().err
    assert err.count("ignored axolotl keys:") == 1 and "wandb_project (not supported)" in err


@pytest.mark.parametrize("optimizer", ["adamw_bnb_8bit", "paged_adamw_32bit", "adamw_8bit", "lion_8bit", "sgd"])
def test_optimizers_other_than_torch_adamw_are_listed_as_changed(optimizer):
    _nested, ignored = from_axolotl({"micro_batch_size": 2, "optimizer": optimizer}, "x.yml")
    assert ignored == [f"optimizer {optimizer} (changed: runs as torch AdamW with fp32 states)"]


@pytest.mark.parametrize("optimizer", ["adamw_torch", "adamw_torch_fused"])
def test_torch_adamw_is_what_runs(optimizer):
    _nested, ignored = from_axolotl({"micro_batch_size": 2, "optimizer": optimizer}, "x.yml")
    assert ignored == []


@pytest.mark.parametrize(
    ("steps_per_epoch", "times", "interval"), [(10, 4, 3), (10, 1, 10), (3, 4, 1), (100, 3, 34), (8, 2, 4), (9, 3, 3)]
)
def test_per_epoch_counts_become_step_intervals_as_transformers_rounds_them(steps_per_epoch, times, interval):
    from harness.training import every

    assert every(steps_per_epoch, times) == interval


def test_saves_and_evals_per_epoch_and_the_pad_token_are_imported(tiny_llama, tmp_path):
    from harness.data.formatting import pad_token_id
    from harness.recipe import prepare_run

    raw = {
        "base_model": "harness/tiny-random-llama",
        "micro_batch_size": 4,
        "saves_per_epoch": 4,
        "evals_per_epoch": 2,
        "special_tokens": {"pad_token": "</s>", "bos_token": "<s>"},
    }
    nested, ignored = from_axolotl(raw, "axolotl.yml")
    assert nested["training"] | nested["dataset"] == {
        "batch_size": 4,
        "saves_per_epoch": 4,
        "evals_per_epoch": 2,
        "pad_token": "</s>",
    }
    assert ignored == ["special_tokens.bos_token (not supported)"]
    sets = [f"{section}.{key}={value}" for section in ("training", "dataset") for key, value in nested[section].items()]
    sets += ["base_model=harness/tiny-random-llama", "dataset.num_examples=45", f"output_dir={tmp_path}"]
    run = prepare_run(load_config(None, sets), with_data=True)
    run.build()
    trainer = run.trainer()
    print(
        f"steps per epoch {trainer.steps_per_epoch}: save every {trainer.save_steps}, eval every {trainer.eval_steps}"
    )
    assert (trainer.steps_per_epoch, trainer.save_steps, trainer.eval_steps) == (9, 3, 5)
    assert pad_token_id(run.tokenizer) == 2  # "</s>"; the tokenizer has no pad token of its own


def test_a_pad_token_outside_the_vocabulary_is_one_line(tiny_llama):
    from harness.recipe import prepare_run

    config = load_config(None, ["base_model=harness/tiny-random-llama", "dataset.pad_token=<pad>"])
    with pytest.raises(ConfigError, match=r"^dataset.pad_token: '<pad>' is not in the tokenizer's vocabulary"):
        prepare_run(config, with_data=False)
