"""The real peak of the harness's own training steps on a device, beside the prediction.

``harness probe`` on a machine with a GPU, and the cuda tier, run what the predictor fakes: the
configured model built from its ``config.json`` with random init, written as safetensors and loaded
through the harness's own loader (so a load-time peak, such as bf16 weights before 4-bit
quantization, is measured too), the configured adapter, and two training steps on full random rows.
The same code runs on CPU in the unit tier; only the peak reader is CUDA's.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config import RunConfig
from harness.memory.predictor import HarnessStep, checked_info, cuda_dtype


@dataclass(frozen=True)
class Measurement:
    peak_gib: float | None  # None where the device keeps no allocator statistics (CPU)
    losses: list[float]  # one per step: the steps really trained
    device: str


def cuda_peak_gib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` in GiB since the last reset; None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def write_random_checkpoint(model_config: dict[str, Any], folder: Path, dtype: torch.dtype, seed: int = 0) -> None:
    """``config.json`` plus random-init safetensors weights, as a hub snapshot would hold them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**{k: v for k, v in model_config.items() if k != "architectures"})
    hf_config.architectures = model_config.get("architectures")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model.save_pretrained(folder, safe_serialization=True)


def measure_steps(
    model_config: dict[str, Any],
    config: RunConfig,
    device: torch.device | str = "cuda",
    *,
    steps: int = 2,
    peak_gib: Callable[[torch.device], float | None] = cuda_peak_gib,
) -> Measurement:
    """Peak device memory of loading ``config``'s model (random init) through the harness's loader,
    adapting it and taking ``steps`` harness training steps, with the CUDA rules the predictor uses
    (its dtype, its gradient-checkpointing default)."""
    from harness.adapters import build_adapter
    from harness.loading import load_model

    device = torch.device(device)
    info = checked_info(model_config, config)
    dtype = cuda_dtype(config)
    on_device = dataclasses.replace(
        config,
        training=dataclasses.replace(
            config.training, gradient_checkpointing=config.gradient_checkpointing(device.type), device=device.type
        ),
    )
    with tempfile.TemporaryDirectory(prefix="harness-measure-") as folder:
        write_random_checkpoint(model_config, Path(folder), dtype)
        reset_peak(device)
        quantization = config.quantization if config.adapter == "qlora" else None
        model = load_model(folder, device=device, dtype=dtype, quantization=quantization)
        model, _summary = build_adapter(model, on_device, info)
        step = HarnessStep(on_device, device=str(device))
        optimizer = None
        for _ in range(steps):
            optimizer = step(model, optimizer, config.training.batch_size, config.dataset.max_length)
        peak = peak_gib(device)
    return Measurement(peak, step.losses, str(device))
