"""Run-config schema: the two example configs parse, every bad value gets its exact one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import RunConfig, load_config
from harness.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

SMOLLM2_DEV = """\
base_model: "HuggingFaceTB/SmolLM2-135M"
adapter: qlora
output_dir: "./outputs/smollm2-qlora"
lora:
  r: 8
  alpha: 16
  dropout: 0.0
  target_modules: [q_proj, v_proj]
quantization: {bits: 4, quant_type: nf4, double_quant: true, block_size: 64}
dataset: {path: "./data/alpaca_1k.jsonl", type: alpaca, max_length: 256, train_split: 0.9}
training:
  epochs: 1
  batch_size: 4
  learning_rate: 0.0002
  weight_decay: 0.0
  logging_steps: 10
  save_steps: 100
  warmup_ratio: 0.1
seed: 42
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_smollm2_dev_config_parses(tmp_path):
    config = load_config(write(tmp_path, SMOLLM2_DEV))
    assert config.adapter == "qlora"
    assert (config.lora.r, config.lora.alpha, config.lora.target_modules) == (8, 16.0, ["q_proj", "v_proj"])
    assert config.quantization.quant_type == "nf4" and config.quantization.double_quant is True
    assert config.dataset.max_length == 256 and config.dataset.train_split == 0.9
    assert config.training.learning_rate == pytest.approx(2e-4)
    assert config.seed == 42


@pytest.mark.parametrize("name", ["smollm2_qlora_dev.yaml", "tinyllama_qlora_val.yaml"])
def test_shipped_configs_parse(name):
    config = load_config(CONFIGS / name)
    assert config.adapter == "qlora"
    assert Path(config.output_dir).is_absolute()


def test_tinyllama_config_values():
    config = load_config(CONFIGS / "tinyllama_qlora_val.yaml")
    assert config.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (config.lora.r, config.lora.dropout, config.training.epochs) == (16, 0.05, 3)


def test_defaults_fill_missing_sections(tmp_path):
    config = load_config(write(tmp_path, "base_model: some/model\n"))
    assert config.lora == RunConfig().lora
    assert config.training.gradient_accumulation_steps == 1


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "data.jsonl").write_text("")
    path = write(tmp_path, "output_dir: out\ndataset: {path: data.jsonl}\n")
    config = load_config(path)
    assert config.output_dir == str(tmp_path / "out")
    assert config.dataset.path == str(tmp_path / "data.jsonl")


def test_float_written_without_dot_is_accepted(tmp_path):
    # PyYAML reads 1e-4 as a string; a user writing it still means a number.
    assert load_config(write(tmp_path, "training: {learning_rate: 1e-4}\n")).training.learning_rate == 1e-4


BAD_VALUES = [
    ("lora: {rank: 8}", "lora.rank: unknown key (did you mean 'lora.r'?); allowed: r, alpha, dropout, target_modules"),
    (
        "trainig: {epochs: 1}",
        "trainig: unknown key (did you mean 'training'?); allowed: base_model, adapter, "
        "output_dir, seed, allow_pickle, model, lora, quantization, dataset, training, validation",
    ),
    ("lora: {r: eight}", "lora.r: must be an integer, got str 'eight'"),
    ("lora: {r: 0}", "lora.r: must be an integer > 0, got 0"),
    ("lora: {r: -4}", "lora.r: must be an integer > 0, got -4"),
    ("lora: {dropout: 1.0}", "lora.dropout: must be a number in [0, 1), got 1.0"),
    ("lora: {dropout: -0.1}", "lora.dropout: must be a number in [0, 1), got -0.1"),
    ("quantization: {bits: 3}", "quantization.bits: must be 4 or 8, got 3"),
    ("quantization: {quant_type: int4}", "quantization.quant_type: must be one of nf4, fp4, got 'int4'"),
    ("quantization: {double_quant: 'yes'}", "quantization.double_quant: must be true or false, got str 'yes'"),
    ("dataset: {train_split: 0}", "dataset.train_split: must be a number in (0, 1], got 0.0"),
    ("dataset: {train_split: 1.5}", "dataset.train_split: must be a number in (0, 1], got 1.5"),
    ("adapter: dora", "adapter: must be one of lora, qlora, none, got 'dora'"),
    ("training: 5", "training: must be a mapping of keys, got int"),
    ("training: {batch_size: 2.5}", "training.batch_size: must be an integer, got float 2.5"),
]


@pytest.mark.parametrize(("yaml_text", "message"), BAD_VALUES, ids=[m.split(":")[0] for _, m in BAD_VALUES])
def test_bad_value_is_rejected_with_exact_message(tmp_path, yaml_text, message):
    path = write(tmp_path, yaml_text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {message}"
    assert "\n" not in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^.*nope\.yaml: no such config file$"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "base_model: x\nlora:\n  r: 8\n  alpha: [16\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:5: invalid YAML:")


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping of keys, got list"):
        load_config(path)


def test_override_sets_a_nested_key(tmp_path):
    config = load_config(write(tmp_path, SMOLLM2_DEV), ["training.learning_rate=1e-3", "lora.r=4"])
    assert (config.training.learning_rate, config.lora.r) == (1e-3, 4)


def test_bad_override_names_the_override(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, SMOLLM2_DEV), ["lora.r=0"])
    assert str(caught.value) == "--set lora.r=0: lora.r: must be an integer > 0, got 0"


def test_override_without_equals_sign(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set lora.r: expected dotted.key=value$"):
        load_config(write(tmp_path, SMOLLM2_DEV), ["lora.r"])


def test_embedded_default_is_valid():
    config = load_config(None)
    assert config.source == "<embedded default>"
    assert config.dataset.path == "builtin:tasks"
