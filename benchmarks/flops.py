"""Model FLOPs utilisation for LoRA/QLoRA training: FLOPs per token of a frozen base, and the peak of the
detected device.

A frozen base does no weight-gradient matmul: 2N FLOPs forward plus 2N for the input gradients, so 4N per
token for its N matmul parameters (the 6N rule is for full fine-tuning). Attention has no weights: QK^T and
AV cost 4 x heads x head_dim x seq per layer and token forward, halved by the causal mask, and backward
needs gradients for both operands (2x forward), so 6 x layers x heads x head_dim x seq in all. The peak is
the dense bf16/fp16 tensor rate from the vendor data sheet, looked up by the name torch reports; an
unknown device, or a dtype the table does not cover, gives no MFU rather than one against a wrong peak.
"""

from __future__ import annotations

from harness.model_info import ModelInfo

# Dense (no sparsity) bf16/fp16 tensor-core peak, FLOP/s, from NVIDIA's data sheets. Matched as a
# substring of torch.cuda.get_device_name(), most specific first ("L40S" before "L4", "PCIe" before "H100").
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
)
TENSOR_DTYPES = ("bfloat16", "float16")


def frozen_base_flops_per_token(info: ModelInfo, seq_len: int) -> float:
    """Forward + backward FLOPs per token with the base frozen: 4 x matmul parameters (LM head included,
    the embedding lookup is no matmul) plus causal attention, 6 x layers x heads x head_dim x seq_len."""
    untied_embedding = 0 if info.tie_word_embeddings else info.vocab_size * info.hidden_size
    matmul_params = info.num_parameters - untied_embedding
    attention = 6 * info.num_layers * info.num_attention_heads * info.head_dim * seq_len
    return 4.0 * matmul_params + attention


def peak_flops(device_name: str, dtype: str) -> float | None:
    """The device's dense tensor peak for ``dtype``; None when the device or dtype is not in the table."""
    if dtype.removeprefix("torch.") not in TENSOR_DTYPES:
        return None
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def mfu(tokens_per_s: float, flops_per_token: float, device_name: str, dtype: str) -> float | None:
    """Achieved / peak FLOP/s; None (reported as unknown) when the peak is unknown."""
    peak = peak_flops(device_name, dtype)
    return None if peak is None else tokens_per_s * flops_per_token / peak
