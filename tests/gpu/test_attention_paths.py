"""The fused attention paths on CUDA: packed rows give the unpacked loss sum and gradients (the CPU
tier proves sdpa, eager, torch_varlen's bookkeeping with a reference kernel, and flex forward)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from harness.attention import check_attention
from harness.loading import load_model
from tests.unit.test_attention import GRAD_RTOL, LOSS_RTOL, batches, leaky, loss_and_grads


@pytest.mark.parametrize("implementation", ["flex_attention", "torch_varlen", "flash_attention_2"])
def test_packed_loss_and_grads_equal_unpacked_on_a_fused_kernel(tiny_llama, implementation):
    if implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash_attn is not installed")
    check_attention(implementation, "cuda")
    model = load_model(tiny_llama.path, device="cuda", attn_implementation=implementation)
    padded, packed = (b.to("cuda") for b in batches())
    unpacked_loss, unpacked_grads = loss_and_grads(model, padded, grads=True)
    packed_loss, packed_grads = loss_and_grads(model, packed, grads=True)
    leaked_loss, _ = loss_and_grads(model, leaky(packed).to("cuda"), grads=False)
    loss_diff = abs(packed_loss - unpacked_loss) / abs(unpacked_loss)
    grad_diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(packed_grads, unpacked_grads))
    print(f"{implementation} on {torch.cuda.get_device_name()}: loss rel diff {loss_diff:.1e}, grad {grad_diff:.1e}")
    # fp32 on the GPU (TF32 off by default for matmuls): held to 10x the CPU tolerances.
    assert loss_diff < 10 * LOSS_RTOL and grad_diff < 10 * GRAD_RTOL
    assert abs(leaked_loss - unpacked_loss) / abs(unpacked_loss) > 20 * LOSS_RTOL
