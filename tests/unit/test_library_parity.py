"""Where harness relies on a library for a job, the result is the library's own: dequantized weights
are bitsandbytes' dequantization, bit for bit; the hub cache is read as huggingface_hub reads it."""

from __future__ import annotations

import json
import random

import bitsandbytes as bnb
import pytest
import torch

from harness.adapters import dequantize_model
from harness.bundled import TINY_RANDOM_LLAMA_CONFIG
from harness.cli import main
from harness.config import QuantizationSection
from harness.data.batching import length_grouped_order, pad_batch
from harness.data.formatting import IGNORE_INDEX, Example
from harness.errors import AdapterError, ModelResolutionError
from harness.loading import load_model
from harness.resolve import resolve_model


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
    worst = max(float((modules[name].weight.detach() - ref).abs().max()) for name, ref in references.items())
    print(f"{bits}-bit: {len(references)} layers, max |dequantize_model - bitsandbytes| = {worst}")
    assert len(references) == 14  # 2 layers x 7 projections
    assert all(type(modules[name]) is torch.nn.Linear for name in references)
    assert all(torch.equal(modules[name].weight, ref) for name, ref in references.items())
    assert not getattr(model, f"is_loaded_in_{bits}bit")  # merge_adapter reads it


def test_dequantize_refuses_an_unquantized_model(tiny_llama):
    with pytest.raises(AdapterError, match=r"dequantize_model: the model was not loaded quantized"):
        dequantize_model(load_model(tiny_llama.path))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty offline hub cache as $HF_HOME/hub (and nothing in the user cache)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf_home" / "hub"


def sharded_snapshot(hub, revision, shards_present, *, ref=True):
    """A snapshot of org/model whose index names two shards, holding only ``shards_present``."""
    repo = hub / "models--org--model"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY_RANDOM_LLAMA_CONFIG))
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": names[0], "lm_head.weight": names[1]}}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in names[:shards_present]:
        (snapshot / name).write_bytes(b"")
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_a_sharded_snapshot_missing_a_shard_is_not_found(hub):
    sharded_snapshot(hub, "partial", shards_present=1)
    with pytest.raises(ModelResolutionError, match=r"org/model: not found; searched .*models--org--model"):
        resolve_model("org/model")


def test_a_sharded_snapshot_with_every_shard_is_found(hub):
    snapshot = sharded_snapshot(hub, "complete", shards_present=2)
    assert resolve_model("org/model").path == snapshot


def test_a_partial_refs_main_snapshot_falls_back_to_the_newest_complete_one(hub):
    older = sharded_snapshot(hub, "older", shards_present=2, ref=False)
    sharded_snapshot(hub, "newer", shards_present=1)  # refs/main, interrupted download
    resolved = resolve_model("org/model")
    print(f"refs/main -> newer (1 of 2 shards); resolved: {resolved.path.name}")
    assert resolved.path == older


def test_an_invalid_hub_id_is_one_line_naming_the_rule(hub, capsys):
    assert main(["fetch", "org/bad name"]) == 2
    err = capsys.readouterr().err
    print(err)
    assert err.count("\n") == 1
    assert err.startswith("error: org/bad name: not a valid hub model id (Repo id must use alphanumeric chars")


def test_length_grouping_is_transformers_length_grouped_sampler():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = [random.Random(i).randint(5, 300) for i in range(1000)]
    ours = length_grouped_order(lengths, batch_size=4, rng=random.Random(7))
    seed = random.Random(7).getrandbits(63)  # the generator seed length_grouped_order draws from its rng
    theirs = list(LengthGroupedSampler(4, lengths=lengths, generator=torch.Generator().manual_seed(seed)))
    print(f"first batch lengths: ours {[lengths[i] for i in ours[:4]]}, sampler {[lengths[i] for i in theirs[:4]]}")
    assert ours == theirs
    assert lengths[ours[0]] == max(lengths)  # the sampler's longest-first rule


def test_padding_to_a_multiple_equals_transformers_seq2seq_collator():
    from tokenizers import Tokenizer, models
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0}, "<pad>")))
    tokenizer.pad_token = "<pad>"
    examples = [Example(list(range(1, n + 1)), [IGNORE_INDEX] * 2 + list(range(3, n + 1))) for n in (5, 11, 3)]
    ours = pad_batch(examples, pad_id=0, pad_to_multiple_of=8).inputs
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX)
    features = [
        {"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels} for e in examples
    ]
    theirs = collator(features)
    print(f"padded width: ours {ours['input_ids'].shape[1]}, collator {theirs['input_ids'].shape[1]}")
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(ours[key], theirs[key].to(ours[key].dtype)), key
