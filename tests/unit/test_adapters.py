"""Adapters from config on the tiny Llama: targets, shapes checked against ModelInfo, counts, errors."""

from __future__ import annotations

import re

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
    with pytest.raises(
        AdapterError,
        match=r"^merge_adapter: the base is quantized; dequantize_model\(base\) first, then load the adapter$",
    ):
        merge_adapter(peft_model)


def test_summary_describes_targets_counts_and_percent():
    from harness.adapters import AdapterSummary

    summary = AdapterSummary("lora", ("q_proj", "v_proj"), 4, 1234, 100000)
    assert summary.describe() == "lora: 4 adapted layers on q_proj, v_proj; trainable 1,234 of 100,000 (1.23%)"
    assert AdapterSummary("full fine-tune", (), 0, 7, 7).describe() == (
        "full fine-tune: 0 adapted layers on all weights; trainable 7 of 7 (100.00%)"
    )


def test_summary_percent_of_a_one_parameter_model_is_100():
    from harness.adapters import AdapterSummary

    assert AdapterSummary("lora", (), 0, 1, 1).trainable_percent == 100.0
    assert AdapterSummary("lora", (), 0, 0, 0).trainable_percent == 0.0


def test_lora_config_carries_the_lora_section():
    from harness.adapters import lora_config

    peft_config = lora_config(config(**{"lora.r": 8, "lora.alpha": 16, "lora.dropout": 0.1}), ["q_proj", "v_proj"])
    assert (peft_config.r, peft_config.lora_dropout, peft_config.bias) == (8, 0.1, "none")
    assert peft_config.lora_alpha == 16 and type(peft_config.lora_alpha) is int  # adapter_config.json: 16, not 16.0
    assert set(peft_config.target_modules) == {"q_proj", "v_proj"}
    assert str(peft_config.task_type) == "CAUSAL_LM"
    assert lora_config(config(**{"lora.alpha": 8.5}), ["q_proj"]).lora_alpha == 8.5


def test_qlora_trains_only_the_lora_weights(tiny_llama):
    cfg = config(adapter="qlora", **{"lora.r": 4, "lora.target_modules": "[q_proj]"})
    info = ModelInfo.from_config(tiny_llama.path)
    peft_model, summary = build_adapter(load_model(tiny_llama.path, quantization=cfg.quantization), cfg, info)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    q_in, q_out = target_dims("q_proj", info)
    assert summary.trainable_parameters == info.num_layers * 4 * (q_in + q_out)


def test_gradient_checkpointing_when_configured(tiny):
    model, info = tiny
    peft_model, _ = build_adapter(model, config(**{"training.gradient_checkpointing": "true"}), info)
    base = peft_model.get_base_model()
    assert base.is_gradient_checkpointing and base.config.use_cache is False
    functions = [m._gradient_checkpointing_func for m in base.modules() if hasattr(m, "_gradient_checkpointing_func")]
    assert functions and all(f.keywords == {"use_reentrant": False} for f in functions)


def test_qlora_with_gradient_checkpointing_feeds_gradients_from_the_embeddings(tiny_llama):
    cfg = config(adapter="qlora", **{"lora.r": 4, "training.gradient_checkpointing": "true"})
    model = load_model(tiny_llama.path, quantization=cfg.quantization)
    peft_model, _ = build_adapter(model, cfg, ModelInfo.from_config(tiny_llama.path))
    embeddings = peft_model.get_input_embeddings()
    assert not embeddings.weight.requires_grad
    assert embeddings(torch.tensor([[1, 2, 3]])).requires_grad  # else checkpointed blocks get no gradient


def test_base_model_id_is_recorded_in_the_adapter_config(tiny):
    model, info = tiny
    peft_model, _ = build_adapter(model, config(), info, base_model_id="org/base")
    assert peft_model.peft_config["default"].base_model_name_or_path == "org/base"


def test_shape_check_of_a_model_without_lora_fails(tiny):
    model, info = tiny
    with pytest.raises(AdapterError, match=r"^found 0 LoRA layers, expected 2 layers x 0 targets$"):
        check_lora_shapes(model, info, 4)


def test_shape_check_counts_layers_against_model_info(tiny):
    model, info = tiny
    peft_model, _ = build_adapter(model, config(**{"lora.r": 4, "lora.target_modules": "[q_proj]"}), info)
    assert check_lora_shapes(peft_model, info, 4) == info.num_layers
    wrong = ModelInfo(**{**info.to_dict(), "num_layers": info.num_layers + 1})
    with pytest.raises(
        AdapterError, match=rf"^found {info.num_layers} LoRA layers, expected {info.num_layers + 1} layers x 1 targets$"
    ):
        check_lora_shapes(peft_model, wrong, 4)


def test_plain_lora_merges_into_its_base(tiny):
    from harness.adapters import merge_adapter

    model, info = tiny
    peft_model, _ = build_adapter(model, config(**{"lora.r": 4}), info)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
        ids = torch.tensor([[1, 40, 41, 42]])
        before = peft_model.eval()(input_ids=ids).logits
        merged = merge_adapter(peft_model)
        assert not any("lora_" in name for name, _ in merged.named_parameters())
        assert torch.allclose(merged(input_ids=ids).logits, before, atol=1e-5)


def test_dequantize_refuses_an_unquantized_model(tiny):
    from harness.adapters import dequantize_model

    with pytest.raises(AdapterError, match=r"^dequantize_model: the model was not loaded quantized"):
        dequantize_model(tiny[0])


def test_full_fine_tune_summary(tiny):
    model, info = tiny
    _, summary = build_adapter(model, config(adapter="none"), info)
    assert (summary.kind, summary.target_modules, summary.lora_layers) == ("full fine-tune", (), 0)


def test_qlora_needs_a_quantized_base(tiny):
    model, info = tiny
    with pytest.raises(
        AdapterError,
        match="^"
        + re.escape("adapter: qlora needs the base model loaded with quantization (load_model(..., quantization=...))")
        + "$",
    ):
        build_adapter(model, config(adapter="qlora"), info)


def eight_bit(tiny_llama):
    cfg = config(adapter="qlora", **{"quantization.bits": 8, "lora.r": 4})
    return load_model(tiny_llama.path, quantization=cfg.quantization), cfg


def test_qlora_builds_on_an_8bit_base(tiny_llama):
    model, cfg = eight_bit(tiny_llama)
    _, summary = build_adapter(model, cfg, ModelInfo.from_config(tiny_llama.path))
    assert (summary.kind, summary.lora_layers) == ("qlora", 2 * 7)


def test_merge_refuses_an_8bit_base(tiny_llama):
    from harness.adapters import merge_adapter

    model, cfg = eight_bit(tiny_llama)
    peft_model, _ = build_adapter(model, cfg, ModelInfo.from_config(tiny_llama.path))
    with pytest.raises(AdapterError, match=r"^merge_adapter: the base is quantized"):
        merge_adapter(peft_model)


def test_dequantized_8bit_base_is_plain(tiny_llama):
    from harness.adapters import dequantize_model

    model = dequantize_model(eight_bit(tiny_llama)[0])
    assert not model.is_loaded_in_8bit
    assert not any(type(m).__name__ == "Linear8bitLt" for m in model.modules())


def test_dequantize_casts_every_weight_to_the_dtype(tiny_llama):
    from harness.adapters import dequantize_model

    cfg = config(adapter="qlora")
    model = dequantize_model(load_model(tiny_llama.path, quantization=cfg.quantization), torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
