"""Adapters from config on the tiny Llama: targets, shapes checked against ModelInfo, counts, errors."""

from __future__ import annotations

import pytest
import torch

from harness.adapters import build_adapter, check_lora_shapes, linear_module_names
from harness.config import load_config
from harness.errors import AdapterError
from harness.loading import load_model
from harness.model_info import ModelInfo, target_dims


def config(**sets):
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


@pytest.fixture
def tiny(tiny_llama):
    return load_model(tiny_llama.path), ModelInfo.from_config(tiny_llama.path)


def test_lora_shapes_follow_model_info(tiny):
    model, info = tiny
    peft_model, summary = build_adapter(
        model, config(**{"lora.r": 4, "lora.target_modules": "[q_proj, k_proj, down_proj]"}), info
    )
    assert summary.lora_layers == info.num_layers * 3
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            in_features, out_features = target_dims(name.rsplit(".", 1)[-1], info)
            assert module.lora_A["default"].weight.shape == (4, in_features)
            assert module.lora_B["default"].weight.shape == (out_features, 4)


def test_trainable_parameter_count_is_exact(tiny):
    model, info = tiny
    _, summary = build_adapter(model, config(**{"lora.r": 4, "lora.target_modules": "[q_proj, v_proj]"}), info)
    q_in, q_out = target_dims("q_proj", info)
    v_in, v_out = target_dims("v_proj", info)
    expected = info.num_layers * 4 * (q_in + q_out + v_in + v_out)
    assert summary.trainable_parameters == expected
    assert summary.total_parameters == info.num_parameters + expected


def test_all_linear_expands_to_the_seven_projections(tiny):
    model, info = tiny
    _, summary = build_adapter(model, config(**{"lora.target_modules": "[all-linear]"}), info)
    assert summary.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_absent_module_lists_what_the_model_has(tiny):
    model, info = tiny
    with pytest.raises(AdapterError) as caught:
        build_adapter(model, config(**{"lora.target_modules": "[qkv_proj]"}), info)
    assert str(caught.value) == (
        "lora.target_modules: 'qkv_proj' is not a linear module of this model; it has: "
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (or use all-linear)"
    )


def test_shape_check_catches_a_wrong_model_info(tiny):
    model, info = tiny
    peft_model, _ = build_adapter(model, config(**{"lora.r": 4}), info)
    wrong = ModelInfo(**{**info.to_dict(), "hidden_size": 4096})
    with pytest.raises(AdapterError, match="do not match ModelInfo"):
        check_lora_shapes(peft_model, wrong, 4)


def test_full_fine_tune_trains_everything(tiny):
    model, info = tiny
    model, summary = build_adapter(model, config(adapter="none"), info)
    assert summary.trainable_parameters == summary.total_parameters == info.num_parameters
    assert all(p.requires_grad for p in model.parameters())


def test_linear_module_names(tiny):
    assert linear_module_names(tiny[0]) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_qlora_on_cpu_builds_and_trains_a_step(tiny_llama):
    from harness.data.batching import pad_batch
    from harness.data.formatting import Example
    from harness.training import training_step

    cfg = config(adapter="qlora", **{"lora.r": 4})
    model = load_model(tiny_llama.path, quantization=cfg.quantization)
    assert {type(m).__name__ for m in model.modules()} >= {"Linear4bit"}
    peft_model, summary = build_adapter(model, cfg, ModelInfo.from_config(tiny_llama.path))
    assert summary.kind == "qlora" and summary.lora_layers == 2 * 7
    ids = list(range(5, 40))
    result = training_step(
        peft_model,
        pad_batch([Example(ids, [-100] * 10 + ids[10:])], pad_id=2),
        torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3),
    )
    assert torch.isfinite(torch.tensor(result.loss)) and result.loss < 10


def test_block_size_other_than_64_is_rejected(tiny_llama):
    cfg = config(adapter="qlora", **{"quantization.block_size": 128})
    with pytest.raises(AdapterError, match=r"quantization.block_size: bitsandbytes .* blocks of 64 only .*got 128"):
        load_model(tiny_llama.path, quantization=cfg.quantization)


def test_qlora_adapter_merges_into_the_dequantized_base(tiny_llama, tmp_path):
    from harness.adapters import dequantize_model, merge_adapter
    from harness.checkpoint import load_adapter, save_checkpoint

    cfg = config(adapter="qlora", **{"lora.r": 4, "lora.target_modules": "[all-linear]"})
    peft_model, _ = build_adapter(
        load_model(tiny_llama.path, quantization=cfg.quantization), cfg, ModelInfo.from_config(tiny_llama.path)
    )
    with torch.no_grad():  # a trained-looking adapter: non-zero B
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    directory = save_checkpoint(peft_model, tmp_path / "qlora")
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])
    with torch.no_grad():
        adapter_logits = peft_model.eval()(input_ids=ids).logits
        base = dequantize_model(load_model(tiny_llama.path, quantization=cfg.quantization))
        merged = merge_adapter(load_adapter(base, directory)).eval()
        merged_logits = merged(input_ids=ids).logits
    diff = float((adapter_logits - merged_logits).abs().max())
    print(f"max |logits(QLoRA adapter on 4-bit base) - logits(merged into dequantized base)| = {diff:.2e}")
    assert diff < 1e-4
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())


def test_merge_refuses_a_quantized_base(tiny_llama):
    from harness.adapters import merge_adapter

    cfg = config(adapter="qlora", **{"lora.r": 4})
    peft_model, _ = build_adapter(
        load_model(tiny_llama.path, quantization=cfg.quantization), cfg, ModelInfo.from_config(tiny_llama.path)
    )
    with pytest.raises(AdapterError, match="the base is quantized; dequantize_model"):
        merge_adapter(peft_model)
