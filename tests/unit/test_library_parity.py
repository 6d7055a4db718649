"""Where harness relies on a library for a job, the result is the library's own: dequantized weights
are bitsandbytes' dequantization, bit for bit."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from harness.adapters import dequantize_model
from harness.config import QuantizationSection
from harness.errors import AdapterError
from harness.loading import load_model


def bnb_reference(module: torch.nn.Module) -> torch.Tensor:
    """bitsandbytes' own dequantization of one quantized linear layer's weight."""
    weight = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    return bnb.functional.int8_vectorwise_dequant(weight.data, weight.SCB).float()


@pytest.mark.parametrize("bits", [4, 8])
def test_dequantized_weights_are_bitsandbytes_own_bit_for_bit(tiny_llama, bits):
    model = load_model(tiny_llama.path, quantization=QuantizationSection(bits=bits))
    quantized = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    references = {name: bnb_reference(m) for name, m in model.named_modules() if isinstance(m, quantized)}
    model = dequantize_model(model)
    modules = dict(model.named_modules())
    worst = max(float((modules[name].weight - ref).abs().max()) for name, ref in references.items())
    print(f"{bits}-bit: {len(references)} layers, max |dequantize_model - bitsandbytes| = {worst}")
    assert len(references) == 14  # 2 layers x 7 projections
    assert all(type(modules[name]) is torch.nn.Linear for name in references)
    assert all(torch.equal(modules[name].weight, ref) for name, ref in references.items())
    assert not getattr(model, f"is_loaded_in_{bits}bit")  # merge_adapter reads it


def test_dequantize_refuses_an_unquantized_model(tiny_llama):
    with pytest.raises(AdapterError, match=r"dequantize_model: the model was not loaded quantized"):
        dequantize_model(load_model(tiny_llama.path))
