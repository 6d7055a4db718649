"""Read axolotl's flat YAML keys into this project's nested run-config schema.

Many users already have axolotl files; ``harness validate`` and ``check-config`` accept them. Each
supported key maps to one dotted key here (one table, no if-chains); keys with no counterpart are
listed once as ignored, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.errors import ConfigError

# axolotl key -> our dotted key (values copied as they are; the schema validates them).
DIRECT: dict[str, str] = {
    "base_model": "base_model",
    "output_dir": "output_dir",
    "seed": "seed",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules",
    "sequence_len": "dataset.max_length",
    "train_on_inputs": "dataset.train_on_inputs",
    "sample_packing": "training.packing",
    "micro_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "num_epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "learning_rate": "training.learning_rate",
    "lr_scheduler": "training.lr_scheduler",
    "warmup_ratio": "training.warmup_ratio",
    "warmup_steps": "training.warmup_steps",
    "weight_decay": "training.weight_decay",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "attn_implementation": "model.attn_implementation",
    "logging_steps": "training.logging_steps",
    "save_steps": "training.save_steps",
    "eval_steps": "training.eval_steps",
    "saves_per_epoch": "training.saves_per_epoch",
    "evals_per_epoch": "training.evals_per_epoch",
    "max_grad_norm": "training.max_grad_norm",
}
# axolotl's boolean attention switches and the attn_implementation each one selects.
ATTENTION_FLAGS = {"flash_attention": "flash_attention_2", "flex_attention": "flex_attention", "sdp_attention": "sdpa"}
# Keys handled by a small converter below.
CONVERTED = {
    "adapter",
    "load_in_4bit",
    "load_in_8bit",
    "lora_target_linear",
    "datasets",
    "val_set_size",
    "optimizer",
    "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant",
    *ATTENTION_FLAGS,
    "special_tokens",
}
# Keys that only say which files or tokenizer classes to use; they change nothing we run.
HARMLESS = {
    "base_model_config",
    "model_type",
    "tokenizer_type",
    "strict",
    "bf16",
    "fp16",
    "tf32",
    "xformers_attention",
    "dataset_prepared_path",
}
# Flat keys that only an axolotl file has: their presence marks the file as axolotl-style.
MARKERS = {
    "lora_r",
    "micro_batch_size",
    "num_epochs",
    "sequence_len",
    "datasets",
    "load_in_4bit",
    "load_in_8bit",
    "lora_target_linear",
    "val_set_size",
    "gradient_accumulation_steps",
    "sample_packing",
}
AXOLOTL_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant"}
# axolotl optimizer names that are what the harness runs: torch's AdamW with fp32 states.
TORCH_ADAMW = {"adamw_torch", "adamw_torch_fused", "adamw_hf"}


def is_axolotl(raw: Mapping[str, Any]) -> bool:
    return any(key in raw for key in MARKERS)


def _put(target: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.rpartition(".")
    (target.setdefault(section, {}) if section else target)[key] = value


def from_axolotl(raw: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """Return (our nested mapping, ignored axolotl keys with the reason)."""
    nested: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in raw.items():
        if key in DIRECT:
            _put(nested, DIRECT[key], value)
        elif key in HARMLESS:
            ignored.append(f"{key} (no effect here)")
        elif key not in CONVERTED:
            ignored.append(f"{key} (not supported)")

    adapter = raw.get("adapter")
    if adapter in (None, ""):
        nested["adapter"] = "none"
    elif adapter == "lora" and raw.get("load_in_4bit"):
        nested["adapter"] = "qlora"  # axolotl's LoRA on a 4-bit base is QLoRA
    else:
        nested["adapter"] = adapter
    if raw.get("load_in_8bit") and adapter in ("lora", "qlora"):
        nested["adapter"] = "qlora"
        _put(nested, "quantization.bits", 8)
    if "bnb_4bit_quant_type" in raw:
        _put(nested, "quantization.quant_type", raw["bnb_4bit_quant_type"])
    if "bnb_4bit_use_double_quant" in raw:
        _put(nested, "quantization.double_quant", raw["bnb_4bit_use_double_quant"])
    for flag, implementation in ATTENTION_FLAGS.items():
        if raw.get(flag) is True and "attn_implementation" not in raw:
            _put(nested, "model.attn_implementation", implementation)
    if raw.get("lora_target_linear"):
        _put(nested, "lora.target_modules", ["all-linear"])
    special = raw.get("special_tokens")
    if isinstance(special, Mapping):
        if "pad_token" in special:
            _put(nested, "dataset.pad_token", special["pad_token"])
        ignored.extend(f"special_tokens.{key} (not supported)" for key in special if key != "pad_token")

    datasets = raw.get("datasets")
    if datasets is not None:
        if not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], Mapping):
            raise ConfigError(f"{source}: datasets: must be a list of {{path, type}} entries")
        if len(datasets) > 1:
            raise ConfigError(f"{source}: datasets: {len(datasets)} entries; the harness trains on one dataset")
        entry = datasets[0]
        for key in entry:
            if key not in ("path", "type"):
                ignored.append(f"datasets[0].{key} (not supported)")
        if "path" in entry:
            _put(nested, "dataset.path", entry["path"])
        if "type" in entry:
            _put(nested, "dataset.type", entry["type"])

    val_set_size = raw.get("val_set_size")
    if val_set_size is not None:
        if not isinstance(val_set_size, (int, float)) or isinstance(val_set_size, bool) or not 0 <= val_set_size < 1:
            raise ConfigError(f"{source}: val_set_size: must be a fraction in [0, 1), got {val_set_size!r}")
        _put(nested, "dataset.train_split", 1.0 - float(val_set_size))

    optimizer = raw.get("optimizer")
    if optimizer is not None and optimizer not in TORCH_ADAMW:
        # 8-bit, paged and other optimizers change memory and numerics: say the run differs.
        ignored.append(f"optimizer {optimizer} (changed: runs as torch AdamW with fp32 states)")
    if "lr_scheduler" in raw and raw["lr_scheduler"] not in AXOLOTL_SCHEDULERS:
        raise ConfigError(
            f"{source}: lr_scheduler: must be one of {', '.join(AXOLOTL_SCHEDULERS)}, got {raw['lr_scheduler']!r}"
        )
    return nested, ignored
