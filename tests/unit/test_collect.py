"""The evidence a validation run collects, measured against independent references on the tiny Llama."""

from __future__ import annotations

import random

import pytest
import torch

from harness.config import load_config
from harness.data.batching import epoch_batches, pack_examples
from harness.data.formatting import IGNORE_INDEX, DataStats, Example, PreparedData, prompt_ids, reference_answer
from harness.data.sources import Record
from harness.generation import generate_ids
from harness.loading import load_model, load_tokenizer
from harness.validation.collect import (
    _as_saved,
    fit_epochs_to_step_cap,
    held_out_loss,
    lora_layers,
    shifted_targets,
)

pytestmark = pytest.mark.unit


def examples(count: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        prompt, response = rng.randint(3, 20), rng.randint(2, 15)
        ids = [1] + [rng.randint(3, 250) for _ in range(prompt + response)]
        out.append(Example(ids, [IGNORE_INDEX] * (prompt + 1) + ids[prompt + 1 :]))
    return out


def data(count: int) -> PreparedData:
    return PreparedData(examples(count), examples(8, seed=1), [], DataStats(), "synthetic")


def config(*sets: str):
    return load_config(None, ["training.batch_size=2", "dataset.max_length=64", *sets])


@pytest.mark.parametrize(("epochs", "cap", "per_epoch"), [(3, 100, 34), (1, 100, 100), (2, 101, 51), (3, 99, 33)])
def test_step_cap_gives_whole_epochs_of_at_least_the_cap(epochs, cap, per_epoch):
    original_config, original_data = config(f"training.epochs={epochs}", f"training.max_steps={cap}"), data(1000)
    capped, trimmed, note = fit_epochs_to_step_cap(original_config, original_data, world_size=1)
    assert len(trimmed.train) == per_epoch * 2
    assert capped.training.max_steps is None and capped.training.epochs == epochs
    assert epochs * per_epoch >= cap and "cut from 1000" in note
    # A new config and new data; the inputs are untouched.
    assert original_config.training.max_steps == cap and len(original_data.train) == 1000


def test_step_cap_on_a_small_training_set_trains_more_epochs():
    capped, trimmed, note = fit_epochs_to_step_cap(
        config("training.epochs=1", "training.max_steps=100"), data(30), world_size=1
    )
    assert len(trimmed.train) == 30
    assert capped.training.epochs == 7 and 7 * 15 >= 100
    assert note.startswith("7 epochs of 15 steps")


def test_step_cap_counts_accumulation_and_ranks():
    capped, trimmed, _ = fit_epochs_to_step_cap(
        config("training.epochs=1", "training.max_steps=10", "training.gradient_accumulation_steps=2"),
        data(1000),
        world_size=2,
    )
    assert len(trimmed.train) == 10 * 2 * 2 * 2


def test_step_cap_with_packing_keeps_the_examples_of_whole_rows():
    capped, trimmed, _ = fit_epochs_to_step_cap(
        config("training.max_steps=20", "training.epochs=2", "training.packing=true"), data(1000), world_size=1
    )
    rows = pack_examples(trimmed.train, 64)
    assert len(rows) == 10 * 2
    for epoch in range(2):
        batches = epoch_batches(
            trimmed.train, batch_size=2, max_length=64, pad_id=0, seed=42, epoch=epoch, packing=True
        )
        assert len(batches) == 10


def test_step_cap_with_packing_on_a_small_set_counts_packed_rows():
    small = data(30)
    rows = len(pack_examples(small.train, 64))
    capped, _same, note = fit_epochs_to_step_cap(
        config("training.epochs=1", "training.max_steps=40", "training.packing=true"), small, world_size=1
    )
    steps = -(-rows // 2)
    assert capped.training.epochs == -(-40 // steps) and note.startswith(f"{capped.training.epochs} epochs of {steps}")


def test_step_cap_absent_changes_nothing():
    original = config()
    capped, same, note = fit_epochs_to_step_cap(original, data(10), world_size=1)
    assert capped is original and len(same.train) == 10 and note == ""


def test_shifted_targets_count_what_a_next_token_loss_scores():
    assert shifted_targets(Example([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4])) == 2
    assert shifted_targets(Example([1, 2, 3], [1, 2, 3])) == 2  # the first token is never predicted


def test_held_out_loss_equals_transformers_loss_per_example(tiny_llama):
    model = load_model(tiny_llama.path)
    sample = examples(11, seed=4)
    measured = held_out_loss(model, sample, pad_id=0, device=torch.device("cpu"))
    with torch.no_grad():
        theirs = [
            float(model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss) for e in sample
        ]
    assert measured.per_example() == pytest.approx(theirs, rel=1e-5)
    assert measured.counts == [shifted_targets(e) for e in sample]


def test_generation_left_pads_for_a_tokenizer_without_a_pad_token(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama.path)
    assert tokenizer.pad_token_id is None  # like Llama-2, Mistral and TinyLlama
    model = load_model(tiny_llama.path)
    prompts = [tokenizer(text)["input_ids"] for text in ("Sort: 3, 1, 2", "Hi", "A much longer prompt than the rest")]
    batched = generate_ids(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    alone = [generate_ids(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert all(isinstance(g.ended, bool) for g in batched)


def test_chat_records_are_prompted_through_the_chat_template(smollm2_tokenizer):
    record = Record(
        messages=[
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Green."},
        ]
    )
    prompt = smollm2_tokenizer.decode(prompt_ids(record, smollm2_tokenizer))
    assert "### Instruction" not in prompt
    assert prompt.endswith("<|im_start|>assistant\n") and "Another?" in prompt and "Green." not in prompt
    assert reference_answer(record) == "Green."


def test_lora_layers_report_the_wrapped_shapes(tiny_llama):
    from harness.adapters import build_adapter
    from harness.model_info import ModelInfo

    cfg = load_config(None, [f"base_model={tiny_llama.path}", "lora.r=4", "lora.target_modules=[q_proj, down_proj]"])
    info = ModelInfo.from_config(tiny_llama.path)
    model, _summary = build_adapter(load_model(tiny_llama.path), cfg, info)
    found = lora_layers(model, info)
    assert len(found) == info.num_layers * 2
    for layer in found:
        assert layer.a_shape == (4, layer.base_in) and layer.b_shape == (layer.base_out, 4)
        assert (layer.predicted_in, layer.predicted_out) == (layer.base_in, layer.base_out)


def test_a_snapshot_missing_a_weight_is_reported_by_the_loader(tiny_llama, tmp_path):
    """The evidence behind 'model loads': transformers' own key report, which the check fails on."""
    import shutil

    from safetensors.torch import load_file, save_file

    from harness.loading import load_model_with_report

    snapshot = tmp_path / "snapshot"
    shutil.copytree(tiny_llama.path, snapshot)
    weights = load_file(str(snapshot / "model.safetensors"))
    dropped = "model.layers.1.mlp.up_proj.weight"
    del weights[dropped]
    save_file(weights, str(snapshot / "model.safetensors"), metadata={"format": "pt"})
    _model, report = load_model_with_report(snapshot)
    assert report.missing_keys == [dropped] and report.unexpected_keys == []
    _model, clean = load_model_with_report(tiny_llama.path)
    assert (clean.missing_keys, clean.unexpected_keys, clean.mismatched_keys) == ([], [], [])


@pytest.mark.parametrize(("saved", "expected"), [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)])
def test_a_reloaded_adapter_gets_the_dtype_it_was_saved_in(tiny_llama, tmp_path, saved, expected):
    # TRL saves QLoRA adapters in bfloat16; PEFT's from_pretrained upcasts them to float32, which moved
    # the tiny model's logits by 2.5e-3 from the trained ones. The reload must compute as training did.
    from peft import LoraConfig, PeftModel, get_peft_model

    model = get_peft_model(load_model(tiny_llama.path), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.data = parameter.data.to(saved)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(load_model(tiny_llama.path), str(tmp_path))
    assert {p.dtype for n, p in reloaded.named_parameters() if "lora_" in n} == {torch.float32}  # PEFT's upcast
    _as_saved(reloaded, tmp_path)
    assert {p.dtype for n, p in reloaded.named_parameters() if "lora_" in n} == {expected}
