"""benchmarks/flops.py: FLOPs per token of a frozen base and MFU, against numbers worked out by hand."""

from __future__ import annotations

import pytest

from benchmarks.flops import frozen_base_flops_per_token, mfu, peak_flops
from harness.model_info import ModelInfo

# hidden 8, 2 layers, 2 heads of 4, 1 KV head, MLP 16, vocab 10, untied. By hand, per layer: q 8x8=64,
# k 8x4=32, v 32, o 64, MLP 3x8x16=384, two norms 16 -> 592; x2 = 1184; embeddings in + out 2x80 = 160;
# final norm 8; total 1352, of which 1272 sit in matmuls (the input embedding is a lookup).
# Frozen base: 4 x 1272 = 5088; causal attention at seq 16: 6 x 2 layers x 2 heads x 4 x 16 = 1536.
TOY = ModelInfo(
    hidden_size=8,
    num_layers=2,
    num_attention_heads=2,
    num_kv_heads=1,
    head_dim=4,
    intermediate_size=16,
    vocab_size=10,
    rope_theta=10000.0,
    max_position=64,
    tie_word_embeddings=False,
)


def test_frozen_base_flops_per_token_matches_the_hand_count() -> None:
    assert frozen_base_flops_per_token(TOY, 16) == 5088 + 1536 == 6624


def test_tied_embeddings_count_the_lm_head_once() -> None:
    tied = ModelInfo(**{**TOY.__dict__, "tie_word_embeddings": True})
    # 1352 - 80 (one embedding matrix fewer) = 1272 parameters, all of them in matmuls once tied.
    assert frozen_base_flops_per_token(tied, 16) == 4 * 1272 + 1536


def test_attention_term_grows_with_sequence_length() -> None:
    assert frozen_base_flops_per_token(TOY, 32) - frozen_base_flops_per_token(TOY, 16) == 1536


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
    ],
)
def test_peak_comes_from_the_device_name(name: str, peak: float) -> None:
    assert peak_flops(name, "torch.bfloat16") == peak


def test_mfu_is_achieved_over_peak() -> None:
    # 1.5e9 tok/s x 6624 FLOP/tok = 9.936e12 FLOP/s on an A100 (312e12): 3.1846...%
    assert mfu(1.5e9, 6624, "NVIDIA A100-SXM4-40GB", "torch.bfloat16") == pytest.approx(0.031846153846)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("cpu", "torch.float32"), ("Some Future GPU", "torch.bfloat16"), ("NVIDIA H100 80GB HBM3", "torch.float32")],
)
def test_mfu_is_unknown_without_a_known_peak(name: str, dtype: str) -> None:
    assert mfu(1000.0, 6624, name, dtype) is None
