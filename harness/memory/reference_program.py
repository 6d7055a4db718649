"""The plain transformers + peft + bitsandbytes loop that produced ``baselines.md`` (what a user gets
without this project), shipped so the predictor can run exactly that program and be checked against
its recorded GPU peaks (``tests/reference/gpu_memory.json``).

LoRA r=16 alpha=32 dropout 0.05 on q/k/v/o; QLoRA through PEFT's ``prepare_model_for_kbit_training``
(which upcasts every non-quantized weight to fp32); the model's own ``labels=`` loss; AdamW with
PyTorch's CUDA default (foreach); peak = ``torch.cuda.max_memory_allocated`` after a reset before load.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.config import RunConfig, config_from_dict


def row_config(adapter: str, batch_size: int, length: int, gradient_checkpointing: bool) -> RunConfig:
    """One measured row as a run config (the predictor's input)."""
    checkpointing = " +checkpointing" if gradient_checkpointing else ""
    return config_from_dict(
        {
            "adapter": adapter,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            "dataset": {"max_length": length},
            "training": {
                "batch_size": batch_size,
                "gradient_checkpointing": gradient_checkpointing,
                "dtype": "bfloat16",
                "learning_rate": 1e-4,
            },
        },
        source=f"reference program {adapter} {batch_size}x{length}{checkpointing}",
    )


def adapt(model: Any, config: RunConfig) -> Any:
    """What the plain script does between loading and training."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    checkpointing = bool(config.training.gradient_checkpointing)
    if config.adapter == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable()
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=int(config.lora.alpha),
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def step(model: Any, optimizer: Any, batch_size: int, length: int) -> Any:
    """One optimizer step on a fixed-length row of token ids with the model's own loss."""
    device = next(model.parameters()).device
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)  # CUDA's default
    ids = torch.zeros((batch_size, length), dtype=torch.long, device=device)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def measure_on_gpu(model_config: dict[str, Any], config: RunConfig, steps: int = 2) -> float:
    """Peak GiB of the plain loop on the current CUDA device, random init (the cuda tier's check)."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    hf_config = AutoConfig.for_model(**{k: v for k, v in model_config.items() if k != "architectures"})
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    if config.adapter == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf_config, **kwargs)
    model = adapt(model, config)
    optimizer = None
    for _ in range(steps):
        optimizer = step(model, optimizer, config.training.batch_size, config.dataset.max_length)
    return torch.cuda.max_memory_allocated() / 2**30
