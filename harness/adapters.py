"""LoRA / QLoRA adapters through PEFT, with every shape checked against ModelInfo.

Target modules come from the config (``all-linear`` expands to the seven Llama projections); a module
the model does not have is an error listing the ones it has. After PEFT injects the adapters, every
LoRA A/B weight is compared with ``target_dims`` so a wrong dimension can never train silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.config import RunConfig
from harness.errors import AdapterError
from harness.model_info import LINEAR_MODULES, ModelInfo, target_dims

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class AdapterSummary:
    kind: str
    target_modules: tuple[str, ...]
    lora_layers: int
    trainable_parameters: int
    total_parameters: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_parameters / max(1, self.total_parameters)

    def describe(self) -> str:
        return (
            f"{self.kind}: {self.lora_layers} adapted layers on {', '.join(self.target_modules) or 'all weights'}; "
            f"trainable {self.trainable_parameters:,} of {self.total_parameters:,} ({self.trainable_percent:.2f}%)"
        )


def linear_module_names(model: Any) -> list[str]:
    """Leaf names of the model's linear layers (plain or bitsandbytes), in first-seen order."""
    names: list[str] = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if _is_linear(module) and leaf not in names and leaf != "lm_head":
            names.append(leaf)
    return names


def _is_linear(module: Any) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def resolve_targets(model: Any, requested: list[str]) -> list[str]:
    available = linear_module_names(model)
    if requested == [ALL_LINEAR]:
        return [name for name in LINEAR_MODULES if name in available]
    missing = [name for name in requested if name not in available]
    if missing:
        raise AdapterError(
            f"lora.target_modules: {missing[0]!r} is not a linear module of this model; "
            f"it has: {', '.join(available)} (or use all-linear)"
        )
    return list(requested)


def _prepare_quantized(model: Any, gradient_checkpointing: bool) -> None:
    """What PEFT's prepare_model_for_kbit_training does, minus its fp32 upcast of every non-quantized
    weight: frozen embeddings and norms stay in their load dtype, which saves memory on the GPU."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if gradient_checkpointing:
        model.enable_input_require_grads()


def lora_config(config: RunConfig, targets: list[str]) -> Any:
    """The ``peft.LoraConfig`` of ``config.lora`` on the resolved ``targets``: what the harness wraps the
    model with, and what TRL's SFTTrainer gets as ``peft_config`` (harness.engines.trl)."""
    from peft import LoraConfig

    alpha = config.lora.alpha
    return LoraConfig(
        r=config.lora.r,
        lora_alpha=int(alpha) if alpha.is_integer() else alpha,  # type: ignore[arg-type]
        lora_dropout=config.lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        bias="none",
    )


def build_adapter(
    model: Any, config: RunConfig, info: ModelInfo, base_model_id: str | None = None
) -> tuple[Any, AdapterSummary]:
    """Wrap ``model`` for training as ``config.adapter`` says; returns the model and what was built."""
    checkpointing = config.gradient_checkpointing(next(model.parameters()).device.type)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.adapter == "none":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        count = sum(p.numel() for p in model.parameters())
        return model, AdapterSummary("full fine-tune", (), 0, count, count)

    from peft import get_peft_model

    if config.adapter == "qlora":
        if not getattr(model, "is_loaded_in_4bit", False) and not getattr(model, "is_loaded_in_8bit", False):
            raise AdapterError(
                "adapter: qlora needs the base model loaded with quantization (load_model(..., quantization=...))"
            )
        _prepare_quantized(model, checkpointing)
    targets = resolve_targets(model, config.lora.target_modules)
    peft_model = get_peft_model(model, lora_config(config, targets))
    if base_model_id:
        peft_model.peft_config["default"].base_model_name_or_path = base_model_id
    layers = check_lora_shapes(peft_model, info, config.lora.r)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = info.num_parameters + trainable
    return peft_model, AdapterSummary(config.adapter, tuple(targets), layers, trainable, total)


def check_lora_shapes(model: Any, info: ModelInfo, r: int) -> int:
    """Compare every LoRA A (r x in) and B (out x r) with target_dims, and the layer count with
    num_layers x targets; returns the number of adapted layers."""
    leaves: set[str] = set()
    checked = 0
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or "default" not in lora_a:
            continue
        leaf = name.rsplit(".", 1)[-1]
        in_features, out_features = target_dims(leaf, info)
        a_shape = tuple(lora_a["default"].weight.shape)
        b_shape = tuple(module.lora_B["default"].weight.shape)
        if a_shape != (r, in_features) or b_shape != (out_features, r):
            raise AdapterError(
                f"{name}: LoRA shapes A{a_shape} B{b_shape} do not match ModelInfo "
                f"(expected A{(r, in_features)} B{(out_features, r)})"
            )
        leaves.add(leaf)
        checked += 1
    if checked != info.num_layers * len(leaves) or not checked:
        raise AdapterError(f"found {checked} LoRA layers, expected {info.num_layers} layers x {len(leaves)} targets")
    return checked


def merge_adapter(peft_model: Any) -> Any:
    """Fold the LoRA weights into the base weights and return the plain model.

    The base must be unquantized: for a QLoRA adapter, ``dequantize_model`` the 4-bit base (the exact
    weights the adapter was trained against), load the adapter onto it, then merge."""
    base = peft_model.get_base_model()
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        raise AdapterError("merge_adapter: the base is quantized; dequantize_model(base) first, then load the adapter")
    return peft_model.merge_and_unload()


def dequantize_model(model: Any, dtype: torch.dtype = torch.float32) -> Any:
    """The 4- or 8-bit model with every bitsandbytes linear layer replaced by a plain ``nn.Linear``
    holding bitsandbytes' dequantization of its weight, in place, by transformers' own
    ``model.dequantize``; the quantization flags it leaves set are cleared so PEFT and
    ``merge_adapter`` treat the model as unquantized."""
    if getattr(model, "hf_quantizer", None) is None:
        raise AdapterError("dequantize_model: the model was not loaded quantized (quantization.bits 4 or 8)")
    model = model.dequantize(dtype=dtype)
    for attribute in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if hasattr(model, attribute):
            setattr(model, attribute, False)
    return model.to(dtype)
