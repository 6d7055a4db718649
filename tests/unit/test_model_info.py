"""ModelInfo and target_dims against the research document's model table and real nn.Linear shapes.

The original design hard-coded hidden 4096 and 32 layers; these tests build every listed model from
its config (meta device, no weights) and compare each projection of every layer with target_dims.
"""

from __future__ import annotations

import json

import pytest
import torch

from harness.bundled import TINYLLAMA_CONFIG
from harness.errors import AdapterError, ModelResolutionError
from harness.model_info import LINEAR_MODULES, ModelInfo, target_dims


def llama_config(hidden, layers, heads, kv_heads, intermediate, vocab, rope_theta, max_position, tied):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "rope_theta": rope_theta,
        "max_position_embeddings": max_position,
        "tie_word_embeddings": tied,
        "rms_norm_eps": 1e-5,
    }


MODELS = {
    "SmolLM2-135M": llama_config(576, 30, 9, 3, 1536, 49152, 100000.0, 8192, True),
    "TinyLlama-1.1B": TINYLLAMA_CONFIG,
    "SmolLM2-360M": llama_config(960, 32, 15, 5, 2560, 49152, 100000.0, 8192, True),
    "SmolLM2-1.7B": llama_config(2048, 24, 32, 32, 8192, 49152, 130000.0, 8192, True),
}
EXPECTED = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "SmolLM2-135M": (576, 30, 9, 3, 1536, 49152),
    "TinyLlama-1.1B": (2048, 22, 32, 4, 5632, 32000),
    "SmolLM2-360M": (960, 32, 15, 5, 2560, 49152),
    "SmolLM2-1.7B": (2048, 24, 32, 32, 8192, 49152),
}


@pytest.fixture(params=list(MODELS))
def model_case(request, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MODELS[request.param]))
    return request.param, ModelInfo.from_config(tmp_path)


def test_config_parsing(model_case):
    name, info = model_case
    got = (
        info.hidden_size,
        info.num_layers,
        info.num_attention_heads,
        info.num_kv_heads,
        info.intermediate_size,
        info.vocab_size,
    )
    assert got == EXPECTED[name]


def test_smollm2_rope_and_tying(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MODELS["SmolLM2-135M"]))
    info = ModelInfo.from_config(tmp_path)
    assert (info.rope_theta, info.head_dim, info.tie_word_embeddings) == (1e5, 64, True)


def test_tinyllama_rope_and_positions():
    info = ModelInfo.from_dict(TINYLLAMA_CONFIG)
    assert (info.rope_theta, info.max_position, info.head_dim, info.tie_word_embeddings) == (1e4, 2048, 64, False)


def test_rope_theta_read_from_rope_parameters():
    config = dict(MODELS["SmolLM2-135M"])
    del config["rope_theta"]
    config["rope_parameters"] = {"rope_theta": 100000.0, "rope_type": "default"}
    assert ModelInfo.from_dict(config).rope_theta == 1e5


def test_kv_heads_default_to_attention_heads():
    config = dict(MODELS["SmolLM2-135M"])
    del config["num_key_value_heads"]
    assert ModelInfo.from_dict(config).num_kv_heads == 9


def test_head_dim_from_config_wins():
    config = dict(MODELS["SmolLM2-135M"], head_dim=32)
    info = ModelInfo.from_dict(config)
    assert target_dims("q_proj", info) == (576, 9 * 32)


def test_research_document_q_proj_example():
    info = ModelInfo.from_dict(MODELS["SmolLM2-135M"])
    assert target_dims("q_proj", info) == (576, 576)
    assert target_dims("k_proj", info) == (576, 192)  # GQA: 3 KV heads x 64


def _meta_model(config):
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"}))


def test_target_dims_match_every_linear_layer(model_case):
    name, info = model_case
    model = _meta_model(MODELS[name])
    checked = 0
    for module_name, module in model.named_modules():
        leaf = module_name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and leaf in LINEAR_MODULES:
            assert (module.in_features, module.out_features) == target_dims(leaf, info), module_name
            checked += 1
    assert checked == info.num_layers * len(LINEAR_MODULES)


def test_parameter_count_matches_the_built_model(model_case):
    name, info = model_case
    model = _meta_model(MODELS[name])
    assert info.num_parameters == sum(p.numel() for p in model.parameters())


def test_unknown_module_is_a_clear_error():
    info = ModelInfo.from_dict(MODELS["SmolLM2-135M"])
    with pytest.raises(AdapterError, match="unknown target module 'qkv_proj'; known: q_proj, k_proj"):
        target_dims("qkv_proj", info)


def test_missing_key_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelResolutionError, match=r"config.json lacks required key 'num_attention_heads'"):
        ModelInfo.from_config(tmp_path)


def test_invalid_json_names_the_line(tmp_path):
    (tmp_path / "config.json").write_text('{\n"hidden_size": 8,\n}')
    with pytest.raises(ModelResolutionError, match=r"config.json:3: invalid JSON"):
        ModelInfo.from_config(tmp_path)
