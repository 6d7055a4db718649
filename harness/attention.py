"""Which attention kernel the model runs, and whether it can run here.

Packed rows (several examples per row, position ids restarting at 0, no attention mask) must not
attend across examples. With ``sdpa`` transformers turns the position ids into a dense B x L x L
boolean mask, which takes SDPA off its flash kernel on a GPU. The other paths keep packed rows on a
fused kernel:

- ``flash_attention_2`` / ``flash_attention_3``: transformers reads the document boundaries from
  the position ids and calls the flash-attn package's varlen kernel (needs the package and CUDA);
- ``flex_attention``: transformers builds a per-document BlockMask for torch's FlexAttention
  (compiled; torch has no FlexAttention backward on CPU, so CUDA for training);
- ``torch_varlen``: torch's own ``torch.nn.attention.varlen.varlen_attn`` (flash kernel built into
  torch, CUDA only), registered here as a transformers attention function.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F

from harness.errors import ConfigError

TORCH_VARLEN = "torch_varlen"
# The Python module each flash implementation imports (transformers' own choice of package).
FLASH_MODULES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
CUDA_ONLY = {
    "flex_attention": f"torch {torch.__version__} has no FlexAttention backward on CPU",
    TORCH_VARLEN: "torch.nn.attention.varlen runs torch's flash kernel, which is built for CUDA only",
    "flash_attention_2": "flash-attn kernels are CUDA only",
    "flash_attention_3": "flash-attn 3 kernels are CUDA (Hopper) only",
}


def check_attention(name: str, device_type: str) -> None:
    """Refuse, in one line, an attention implementation that cannot train on this device."""
    allowed = "use sdpa (the default) or eager"
    if device_type != "cuda" and name in CUDA_ONLY:
        raise ConfigError(
            f"model.attn_implementation: {name} cannot train on {device_type}: {CUDA_ONLY[name]}; {allowed}"
        )
    module = FLASH_MODULES.get(name)
    if module is not None:
        try:
            importlib.import_module(module)
        except Exception as exc:  # an ImportError, or a binary built against another torch
            raise ConfigError(
                f"model.attn_implementation: {name} needs the {module} package, which does not import here "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                f"use torch_varlen or flex_attention on CUDA, or sdpa"
            ) from None


def register_torch_varlen() -> None:
    """Make ``torch_varlen`` a transformers attention implementation (idempotent). Its mask function
    is the flash one: the 2D padding mask, or None when there is no padding."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(TORCH_VARLEN, torch_varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(TORCH_VARLEN, flash_attention_mask)


def document_bounds(position_ids: torch.Tensor, attention_mask: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Cumulative start offsets (int32, ending with B*L) of the causal segments of the flattened
    batch: a new segment begins at each row, where the position ids do not continue (a packed
    example), and where the padding mask switches (right or left padding is its own segment)."""
    positions = position_ids.expand(batch, -1)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    if attention_mask is not None:
        starts[:, 1:] |= attention_mask[:, 1:] != attention_mask[:, :-1]
    offsets = starts.flatten().nonzero().flatten()
    end = torch.tensor([starts.numel()], device=offsets.device)
    return torch.cat([offsets, end]).to(torch.int32)


def torch_varlen_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention of [B, H, L, D] inputs through ``varlen_attn`` over the document segments;
    returns [B, L, H, D] as transformers' attention functions do. A one-token decode step (generation
    with a cache) has nothing to split and runs plain SDPA with the padding mask."""
    if dropout:
        raise ValueError(f"{TORCH_VARLEN}: attention dropout is not supported (got {dropout})")
    batch, heads, length, dim = query.shape
    if length == 1:
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    if key.shape[2] != length:
        raise ValueError(f"{TORCH_VARLEN}: {length} queries over {key.shape[2]} cached keys; use sdpa to generate")
    from torch.nn.attention import varlen

    bounds = document_bounds(kwargs["position_ids"], attention_mask, batch)
    longest = int((bounds[1:] - bounds[:-1]).max())
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    packed: Any = varlen.varlen_attn(
        q, k, v, bounds, bounds, longest, longest, scale=scaling, window_size=(-1, 0), enable_gqa=heads != k.shape[1]
    )
    return packed.reshape(batch, length, heads, dim), None
