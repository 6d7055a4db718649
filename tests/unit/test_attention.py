"""model.attn_implementation: packed rows give the unpacked loss (and gradients) on every attention
path that runs on CPU; the paths that cannot run here are refused in one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.attention import check_attention, document_bounds
from harness.config import config_from_dict
from harness.data.batching import Batch, collate_packed, pack_examples, pad_batch
from harness.errors import ConfigError
from harness.loading import load_model
from harness.training import loss_sum_and_count
from tests.unit.test_batching import make_examples

# Measured on the tiny Llama (fp32, 2 threads): packed vs padded loss sums differ by <= 1e-7
# relative, gradients by <= 5e-7 of their largest entry; without document bounds by 1.1e-4.
LOSS_RTOL = 1e-6
GRAD_RTOL = 1e-5


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """torch's varlen_attn contract (causal segments of a flattened batch), written with plain SDPA
    per segment: CPU stands in for the CUDA-only kernel to test the segment bookkeeping around it."""
    assert window_size == (-1, 0) and torch.equal(cu_q, cu_k) and max_q == int((cu_q[1:] - cu_q[:-1]).max())
    pieces = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=enable_gqa)
        pieces.append(out.transpose(0, 1))
    return torch.cat(pieces)


@pytest.fixture
def varlen_on_cpu(monkeypatch):
    from torch.nn.attention import varlen

    monkeypatch.setattr(varlen, "varlen_attn", reference_varlen)


def batches() -> tuple[Batch, Batch]:
    examples = make_examples(12, seed=3, vocab=250)
    return pad_batch(examples, pad_id=2), collate_packed(pack_examples(examples, 96), pad_id=2)


def leaky(batch: Batch) -> Batch:
    """The packed batch with plain positions: one long sequence per row, as if there were no documents."""
    inputs = dict(batch.inputs)
    inputs["position_ids"] = torch.arange(batch.shape[1]).repeat(batch.shape[0], 1)
    return Batch(inputs, batch.num_tokens, batch.num_targets)


def loss_and_grads(model, batch: Batch, *, grads: bool) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grads):
        total, _count = loss_sum_and_count(model, batch)
    if grads:
        total.backward()
    return float(total), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    ("implementation", "grads"),
    [("sdpa", True), ("eager", True), ("torch_varlen", True)],
)
def test_packed_loss_equals_unpacked_loss(tiny_llama, varlen_on_cpu, implementation, grads):
    """Loss sums and gradients; flex_attention (forward only on CPU) is in tests/cpu/test_attention_flex.py."""
    model = load_model(tiny_llama.path, attn_implementation=implementation)
    padded, packed = batches()
    unpacked_loss, unpacked_grads = loss_and_grads(model, padded, grads=grads)
    packed_loss, packed_grads = loss_and_grads(model, packed, grads=grads)
    leaked_loss, _ = loss_and_grads(model, leaky(packed), grads=False)
    loss_diff = abs(packed_loss - unpacked_loss) / abs(unpacked_loss)
    grad_diff = (
        max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(packed_grads, unpacked_grads))
        if grads
        else 0.0
    )
    print(
        f"{implementation}: loss sum unpacked {unpacked_loss:.6f} packed {packed_loss:.6f} (rel diff {loss_diff:.1e}); "
        f"max grad rel diff {grad_diff:.1e}; without document bounds {leaked_loss:.6f}"
    )
    assert loss_diff < LOSS_RTOL and grad_diff < GRAD_RTOL
    assert abs(leaked_loss - unpacked_loss) / abs(unpacked_loss) > 20 * LOSS_RTOL  # the check can fail


def test_document_bounds_split_rows_documents_and_padding():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    assert document_bounds(positions, mask, 2).tolist() == [0, 3, 5, 6, 10, 12]
    assert document_bounds(positions[1:], None, 2).tolist() == [0, 6, 12]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_cpu_attention_paths_are_accepted(implementation):
    check_attention(implementation, "cpu")


@pytest.mark.parametrize(
    ("implementation", "reason"),
    [
        ("flex_attention", "has no FlexAttention backward on CPU"),
        ("torch_varlen", "built for CUDA only"),
        ("flash_attention_2", "flash-attn kernels are CUDA only"),
        ("flash_attention_3", "CUDA (Hopper) only"),
    ],
)
def test_cuda_only_attention_is_refused_on_cpu_in_one_line(implementation, reason):
    with pytest.raises(ConfigError) as caught:
        check_attention(implementation, "cpu")
    message = str(caught.value)
    print(message)
    assert message.startswith(f"model.attn_implementation: {implementation} cannot train on cpu") and reason in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("implementation", "package"), [("flash_attention_2", "flash_attn"), ("flash_attention_3", "flash_attn_interface")]
)
def test_flash_attention_without_its_package_is_refused(monkeypatch, implementation, package):
    import importlib

    real = importlib.import_module

    def missing(name, *args):
        if name == package:
            raise ImportError(f"No module named '{package}'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ConfigError, match=f"{implementation} needs the {package} package, which does not import"):
        check_attention(implementation, "cuda")


def test_attention_key_defaults_to_sdpa_and_rejects_unknown_names():
    assert config_from_dict({}).model.attn_implementation == "sdpa"
    assert (
        config_from_dict({"model": {"attn_implementation": "flex_attention"}}).model.attn_implementation
        == "flex_attention"
    )
    with pytest.raises(ConfigError, match="model.attn_implementation: must be one of sdpa, eager, flex_attention"):
        config_from_dict({"model": {"attn_implementation": "flash"}}, "x.yaml")
