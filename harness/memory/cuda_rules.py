"""CUDA's kernel choices, as one table, so a prediction made on a CPU counts what a GPU would hold.

Fake tensors live on the CPU device (CUDA fake tensors abort in backward on a CPU-only torch build),
so every place where the CPU and CUDA pick different kernels with different memory is replaced here
by CUDA's choice. Each rule records the torch/transformers versions it was checked against; a unit
test fails when the installed versions fall outside, because an upgrade can change these choices
(e.g. newer Hopper builds prefer cuDNN attention) and with them the numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

CHECKED_TORCH = ("2.11", "2.13")  # majors.minors the rules were checked on (inclusive range)
CHECKED_TRANSFORMERS = ("5.17", "5.24")


@dataclass(frozen=True)
class Rule:
    what: str
    cuda_choice: str
    memory_effect: str
    checked_on: str


RULES: tuple[Rule, ...] = (
    Rule(
        "attention, bf16/fp16, no mask (GQA or not)",
        "flash attention (saves output + fp32 logsumexp)",
        "no B x H x L x L scores",
        "torch 2.11 cu130 H100 / transformers 5.17 (baselines.md); fake path torch 2.13 / transformers 5.24",
    ),
    Rule(
        "attention with a mask (padding or packed rows)",
        "memory-efficient attention; transformers repeats k/v for GQA itself",
        "no scores; k/v repeated to all heads",
        "torch 2.11 / transformers 5.17; transformers 5.24 use_gqa_in_sdpa: GQA in SDPA only without a mask",
    ),
    Rule(
        "attention, fp32, no mask, GQA (QLoRA after PEFT's fp32 upcast)",
        "math kernel (flash needs 16-bit, efficient has no GQA)",
        "fp32 B x H x L x L scores and softmax saved for backward",
        "torch 2.11 H100: predicted 6.05 vs measured 7.10 GiB only with this rule (4.50 without)",
    ),
    Rule(
        "attention, fp32, no mask, no GQA",
        "memory-efficient attention",
        "no scores",
        "torch 2.11 / 2.13 sdp_utils constraints",
    ),
    Rule(
        "dropout in training (LoRA dropout)",
        "fused native_dropout: 1-byte boolean mask",
        "the CPU path keeps a full-size float mask (+0.5 GiB on one row)",
        "torch 2.11 / 2.13 (aten::dropout is_fused_kernel_acceptable: CUDA only)",
    ),
    Rule(
        "AdamW",
        "harness: fused=True (build_optimizer); plain PyTorch default: foreach",
        "foreach keeps per-list temporaries, fused none; state is 2 x fp32-sized per trainable weight",
        "torch 2.11 / 2.13 _default_to_fused_or_foreach",
    ),
    Rule(
        "causal mask (transformers masking_utils)",
        "no mask for full rows: SDPA's is_causal (eager GPU run); a block mask for packed rows",
        "transformers reads fake tensors as tracing and would build a B x L x L mask, leaving flash",
        "transformers 5.24 masking_utils._ignore_causal_mask_sdpa (q_offset is a tensor)",
    ),
    Rule(
        "loss",
        "the harness's own training_step (imported from harness.training), so its chunked/fused loss is counted",
        "whatever that loss holds for backward",
        "harness at this commit",
    ),
)


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def versions_outside_table(torch_version: str, transformers_version: str) -> list[str]:
    """The installed libraries whose version the rules were not checked on (empty when all are)."""
    outside = []
    for name, version, (low, high) in (
        ("torch", torch_version, CHECKED_TORCH),
        ("transformers", transformers_version, CHECKED_TRANSFORMERS),
    ):
        if not _minor(low) <= _minor(version) <= _minor(high):
            outside.append(f"{name} {version} (rules checked on {low}..{high})")
    return outside


def attention_backend(dtype: torch.dtype, has_mask: bool, gqa: bool) -> str:
    """The SDPA kernel CUDA takes for these inputs: flash, efficient or math."""
    if has_mask:
        return "efficient"
    if dtype in (torch.float16, torch.bfloat16):
        return "flash"
    return "math" if gqa else "efficient"


def _cuda_sdpa(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None, **kw: Any) -> Any:
        gqa = query.shape[-3] != key.shape[-3]
        if attention_backend(query.dtype, attn_mask is not None, gqa) == "math":
            return torch.ops.aten._scaled_dot_product_attention_math(
                query,
                key,
                value,
                attn_mask,
                kw.get("dropout_p", 0.0),
                kw.get("is_causal", False),
                None,
                scale=kw.get("scale"),
                enable_gqa=kw.get("enable_gqa", False),
            )[0]
        # The CPU fused kernel keeps what CUDA's flash/efficient kernels keep: output + fp32 logsumexp.
        return original(query, key, value, attn_mask, **kw)

    return sdpa


def _cuda_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    if not training or p == 0:
        return input
    return torch.ops.aten.native_dropout(input, p, True)[0]


@contextlib.contextmanager
def cuda_choices() -> Iterator[None]:
    """Within this block, attention, dropout and transformers' mask decisions are CUDA's (see RULES)."""
    from transformers import masking_utils

    sdpa, dropout, tracing = F.scaled_dot_product_attention, F.dropout, masking_utils.is_tracing
    F.scaled_dot_product_attention = _cuda_sdpa(sdpa)
    F.dropout = _cuda_dropout
    masking_utils.is_tracing = lambda tensor=None: tracing(None)
    try:
        yield
    finally:
        F.scaled_dot_product_attention, F.dropout, masking_utils.is_tracing = sdpa, dropout, tracing
