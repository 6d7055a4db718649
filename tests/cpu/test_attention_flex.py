"""flex_attention on CPU: forward only (torch has no FlexAttention backward on CPU, so training with it
is refused there); its per-document BlockMask gives packed rows the unpacked loss. Slow tier: the
first run compiles the kernel (44 s cold, 13 s with the inductor cache)."""

from __future__ import annotations

from tests.unit import test_attention as unit


def test_flex_packed_loss_equals_unpacked_loss_forward_only(tiny_llama):
    unit.test_packed_loss_equals_unpacked_loss(tiny_llama, None, "flex_attention", grads=False)
