"""Shapes the way PEFT's own tests cover them: tiny models built from config with tied and untied heads,
GQA ratios 1, 2 and 4, a Qwen2-style config (q/k/v projections with bias), and tokenizers with no pad
token and with pad equal to EOS. Each case goes through ModelInfo, the adapter, a training step,
save/reload and merge, and is compared with what the model itself holds or computes."""

from __future__ import annotations

import pytest
import torch

from harness.adapters import build_adapter, merge_adapter
from harness.bundled import byte_level_tokenizer
from harness.checkpoint import load_adapter, save_checkpoint
from harness.config import load_config
from harness.data.batching import epoch_batches
from harness.data.formatting import IGNORE_INDEX, pad_token_id, tokenize_record
from harness.data.sources import Record
from harness.loading import load_model, load_tokenizer
from harness.model_info import LINEAR_MODULES, ModelInfo, target_dims
from harness.training import build_optimizer, training_step

HIDDEN, HEADS, VOCAB = 32, 4, 259


def model_config(kind: str, kv_heads: int, tied: bool) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM" if kind == "qwen2" else "LlamaForCausalLM"],
        "model_type": kind,
        "hidden_size": HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": kv_heads,
        "intermediate_size": 48,
        "vocab_size": VOCAB,
        "max_position_embeddings": 512,
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


MODELS = {
    "llama-tied-mha": model_config("llama", 4, True),  # GQA ratio 1
    "llama-untied-gqa2": model_config("llama", 2, False),
    "llama-tied-gqa4": model_config("llama", 1, True),
    "qwen2-bias-gqa2": model_config("qwen2", 2, False),
}
TOKENIZERS = ("no-pad", "pad-is-eos")
RECORDS = [
    Record("Name a colour.", "", "Blue."),
    Record("Add the numbers.", "2 and 3", "The sum is 5."),
    Record("Say hi.", "", "Hi!"),
]


def snapshot(tmp_path, name: str, tokenizer_kind: str):
    """A snapshot directory as resolve_model leaves it: config, seeded random weights, tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(MODELS[name])
    kind = config.pop("model_type")
    config.pop("architectures")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **config))
    model.save_pretrained(tmp_path)
    tokenizer = byte_level_tokenizer()
    if tokenizer_kind == "pad-is-eos":
        tokenizer.pad_token = tokenizer.eos_token
    # Beside, not inside: transformers 5 picks a tokenizer class from config.json's model type, so a
    # qwen2 snapshot would load this byte-level vocab as Qwen2Tokenizer with an extra pad token.
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    return tmp_path


def run_config(tmp_path):
    return load_config(
        None, [f"output_dir={tmp_path / 'out'}", "lora.r=4", "lora.alpha=8", "lora.target_modules=[all-linear]"]
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_model_info_counts_every_parameter_and_projection(tmp_path, name):
    path = snapshot(tmp_path, name, "no-pad")
    model, info = load_model(path), ModelInfo.from_config(path)
    actual = sum(p.numel() for p in model.parameters())
    print(f"{name}: ModelInfo.num_parameters {info.num_parameters}, the model holds {actual}")
    assert info.num_parameters == actual
    assert info.tie_word_embeddings == MODELS[name]["tie_word_embeddings"]
    shapes = {
        leaf: (module.in_features, module.out_features)
        for qualified, module in model.named_modules()
        if (leaf := qualified.rsplit(".", 1)[-1]) in LINEAR_MODULES
    }
    assert shapes == {leaf: target_dims(leaf, info) for leaf in LINEAR_MODULES}


def test_model_info_counts_projection_biases():
    """The FAIL side: the same Qwen2 config read as Llama (no biases) must count fewer parameters, by
    exactly the q/k/v bias lengths per layer."""
    qwen = ModelInfo.from_dict(MODELS["qwen2-bias-gqa2"])
    llama = ModelInfo.from_dict({**MODELS["qwen2-bias-gqa2"], "model_type": "llama"})
    q_out, kv_out = target_dims("q_proj", qwen)[1], target_dims("k_proj", qwen)[1]
    assert qwen.num_parameters - llama.num_parameters == 2 * (q_out + 2 * kv_out)
    with_all = ModelInfo.from_dict({**MODELS["llama-untied-gqa2"], "attention_bias": True, "mlp_bias": True})
    plain = ModelInfo.from_dict(MODELS["llama-untied-gqa2"])
    assert with_all.num_parameters - plain.num_parameters == 2 * (q_out + 2 * kv_out + HIDDEN + 2 * 48 + HIDDEN)


@pytest.mark.parametrize("tokenizer_kind", TOKENIZERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_adapter_train_save_reload_merge(tmp_path, name, tokenizer_kind):
    path = snapshot(tmp_path / "model", name, tokenizer_kind)
    tokenizer, info = load_tokenizer(path / "tokenizer"), ModelInfo.from_config(path)
    model, summary = build_adapter(load_model(path), run_config(tmp_path), info)
    expected_trainable = info.num_layers * 4 * sum(sum(target_dims(m, info)) for m in LINEAR_MODULES)
    assert summary.trainable_parameters == expected_trainable
    assert summary.total_parameters == sum(p.numel() for p in model.parameters())

    # Padding is EOS either way; the response's own EOS stays a target even when pad equals EOS.
    pad = pad_token_id(tokenizer)
    assert pad == tokenizer.eos_token_id == 2
    examples = [tokenize_record(record, tokenizer, max_length=256) for record in RECORDS]
    assert all(e is not None and e.labels[-1] == tokenizer.eos_token_id for e in examples)
    (batch,) = epoch_batches(examples, batch_size=3, max_length=256, pad_id=pad, seed=0, epoch=0, shuffle=False)
    mask, labels = batch.inputs["attention_mask"], batch.inputs["labels"]
    assert int((labels == tokenizer.eos_token_id).sum()) == len(RECORDS)
    assert bool((labels[mask == 0] == IGNORE_INDEX).all()) and int((mask == 0).sum()) > 0

    optimizer = build_optimizer(model, 1e-2, 0.0, torch.device("cpu"))
    with torch.no_grad():
        transformers_loss = float(model(**batch.inputs).loss)
    step = training_step(model, batch, optimizer)
    print(f"{name}/{tokenizer_kind}: step loss {step.loss:.6f}, transformers {transformers_loss:.6f}")
    assert step.loss == pytest.approx(transformers_loss, rel=1e-5)
    assert step.num_targets == int((labels != IGNORE_INDEX).sum())

    inputs = {k: v for k, v in batch.inputs.items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        trained = model(**inputs).logits
        with model.disable_adapter():
            base = model(**inputs).logits
    moved = float((trained - base).abs().max())
    assert moved > 1e-4, "one step at lr 1e-2 must change the logits"

    save_checkpoint(model, tmp_path / "checkpoint")
    reloaded = load_adapter(load_model(path), tmp_path / "checkpoint")
    reloaded.eval()
    with torch.no_grad():
        reloaded_diff = float((reloaded(**inputs).logits - trained).abs().max())
        merged_diff = float((merge_adapter(reloaded)(**inputs).logits - trained).abs().max())
    print(f"logits moved by {moved:.2e}; reloaded max |diff| {reloaded_diff:.2e}, merged {merged_diff:.2e}")
    assert reloaded_diff == 0.0
    # Merging reorders float32 sums (W + BA vs Wx + BAx): a rounding error far below what training moved.
    assert merged_diff < 1e-3 * moved
