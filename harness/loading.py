"""Load a resolved snapshot as a model and tokenizer: device, dtype, and bitsandbytes quantization.

Weights load from safetensors only and ``trust_remote_code`` is never set: a snapshot is data, not
code to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from harness.attention import TORCH_VARLEN, register_torch_varlen
from harness.config import QuantizationSection
from harness.errors import AdapterError, ConfigError, ModelResolutionError

BNB_4BIT_BLOCK_SIZE = 64  # what transformers' bitsandbytes integration quantizes 4-bit weights with


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelResolutionError("training.device: cuda was asked for, but torch sees no CUDA device")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(preference)


def pick_dtype(preference: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on a GPU that supports it and fp32 on CPU (bf16 matmuls are slow there)."""
    if preference != "auto":
        return getattr(torch, preference)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_training_precision(dtype: torch.dtype, adapter: str) -> None:
    """Refuse the precisions this trainer cannot train safely: float16 needs loss scaling (a
    GradScaler) or its gradients underflow, and a full fine-tune in bfloat16 would update the weights
    without fp32 master copies, losing most small updates to rounding."""
    if dtype == torch.float16:
        raise ConfigError(
            "training.dtype: float16 training needs loss scaling, which harness does not do; "
            "use bfloat16 (GPUs since Ampere) or float32"
        )
    if dtype == torch.bfloat16 and adapter == "none":
        raise ConfigError(
            "training.dtype: a full fine-tune (adapter: none) in bfloat16 has no fp32 master weights; "
            "use float32, or a LoRA adapter (its weights stay fp32-safe in bfloat16 runs)"
        )


def load_tokenizer(snapshot: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(snapshot))


def bitsandbytes_config(quantization: QuantizationSection, compute_dtype: torch.dtype) -> Any:
    """The BitsAndBytesConfig for a QLoRA run, or a clear error for what bitsandbytes cannot do."""
    from transformers import BitsAndBytesConfig

    if quantization.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization.block_size != BNB_4BIT_BLOCK_SIZE:
        raise AdapterError(
            f"quantization.block_size: bitsandbytes {_version('bitsandbytes')} quantizes 4-bit weights in "
            f"blocks of {BNB_4BIT_BLOCK_SIZE} only through transformers; got {quantization.block_size}"
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(not installed)"


@dataclass
class LoadingReport:
    """What transformers' loader said about the checkpoint's keys (``output_loading_info``)."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[str] = field(default_factory=list)


def load_model(
    snapshot: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quantization: QuantizationSection | None = None,
    allow_pickle: bool = False,
    attn_implementation: str = "sdpa",
) -> Any:
    """Load a causal LM from a snapshot; ``quantization`` loads it 4- or 8-bit for QLoRA. Pickle
    weights (which can run code when unpickled) are refused unless ``allow_pickle``.
    ``attn_implementation`` is a transformers name or ``torch_varlen`` (see harness.attention)."""
    model, _report = load_model_with_report(
        snapshot,
        device=device,
        dtype=dtype,
        quantization=quantization,
        allow_pickle=allow_pickle,
        attn_implementation=attn_implementation,
    )
    return model


def load_model_with_report(
    snapshot: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quantization: QuantizationSection | None = None,
    allow_pickle: bool = False,
    attn_implementation: str = "sdpa",
) -> tuple[Any, LoadingReport]:
    """``load_model``, plus the loader's report of missing, unexpected and mismatched keys."""
    from transformers import AutoModelForCausalLM

    snapshot = Path(snapshot)
    use_safetensors = True
    if not any(snapshot.glob("*.safetensors")):
        pickles = sorted(p.name for p in snapshot.glob("*") if p.suffix in (".bin", ".pt", ".pth"))
        if not pickles:
            raise ModelResolutionError(f"{snapshot}: no *.safetensors weights")
        if not allow_pickle:
            raise ModelResolutionError(
                f"{snapshot}: only pickle weights ({', '.join(pickles)}), which can run code "
                "when loaded; convert them to safetensors or pass --allow-pickle"
            )
        use_safetensors = False
    device = torch.device(device)
    if attn_implementation == TORCH_VARLEN:
        register_torch_varlen()
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "use_safetensors": use_safetensors,
        "attn_implementation": attn_implementation,
        "trust_remote_code": False,
    }
    if quantization is not None:
        compute = dtype if quantization.compute_dtype == "auto" else getattr(torch, quantization.compute_dtype)
        kwargs["quantization_config"] = bitsandbytes_config(quantization, compute)
        kwargs["device_map"] = {"": device}
    loaded: Any = AutoModelForCausalLM.from_pretrained(str(snapshot), output_loading_info=True, **kwargs)
    model, info = loaded
    if quantization is None:
        model.to(device)
    else:
        _keep_4bit_weights_trainable(model)
    report = LoadingReport(
        sorted(info.get("missing_keys", [])),
        sorted(info.get("unexpected_keys", [])),
        sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", [])),
    )
    return model, report


def _keep_4bit_weights_trainable(model: Any) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a Linear4bit weight into an inference-only layout
    on its first eval-mode, no-grad forward (a generation, an eval loss); after that no gradient reaches
    a LoRA adapter on top, and reloaded copies compute different logits. Training needs the ordinary
    layout, so the repacking is switched off."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
