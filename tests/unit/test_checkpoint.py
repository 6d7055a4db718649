"""Checkpoint files one behaviour at a time: the manifest against hashlib, every refusal's message,
atomic replacement, the training state round trip, step listing, export, and loading weights back."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.adapters import build_adapter
from harness.checkpoint import (
    TrainingState,
    check_adapter_base,
    export_adapter,
    list_checkpoints,
    load_adapter,
    load_failure,
    load_training_state,
    load_weights_into,
    save_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from harness.config import load_config
from harness.errors import CheckpointError
from harness.loading import load_model
from harness.model_info import ModelInfo


def adapted(tiny_llama, adapter="lora"):
    config = load_config(None, [f"adapter={adapter}", "lora.r=4", "lora.target_modules=[q_proj, v_proj]"])
    torch.manual_seed(0)  # the same LoRA A init every time
    return build_adapter(load_model(tiny_llama.path), config, ModelInfo.from_config(tiny_llama.path))[0]


def perturbed(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.01)
    return model


def trained(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_manifest_lists_every_file_with_its_size_and_sha256(tmp_path):
    big = bytes(range(256)) * 5000  # more than one 1 MiB read
    (tmp_path / "weights.bin").write_bytes(big)
    (tmp_path / "config.json").write_text("{}")
    write_manifest(tmp_path)
    expected = {
        "format": 1,
        "files": {
            "config.json": {"bytes": 2, "sha256": hashlib.sha256(b"{}").hexdigest()},
            "weights.bin": {"bytes": len(big), "sha256": hashlib.sha256(big).hexdigest()},
        },
    }
    assert json.loads((tmp_path / "manifest.json").read_text()) == expected
    assert verify_checkpoint(tmp_path) == expected


def test_verify_names_a_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"/absent: no such checkpoint directory$"):
        verify_checkpoint(tmp_path / "absent")


@pytest.mark.parametrize("text", ["not json", '{"format": 1}', "[]"])
def test_unreadable_manifest_is_named(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"manifest.json: unreadable manifest$"):
        verify_checkpoint(tmp_path)


def test_same_size_corruption_is_caught_by_the_hash(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"abcd")
    write_manifest(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"abce")
    with pytest.raises(CheckpointError, match=r"weights.bin: corrupt: sha256 differs from manifest.json$"):
        verify_checkpoint(tmp_path)


def test_saving_over_a_checkpoint_replaces_it_and_leaves_no_temporaries(tmp_path, tiny_llama):
    model = adapted(tiny_llama)
    save_checkpoint(perturbed(model, 0), tmp_path / "out" / "ckpt")
    directory = save_checkpoint(perturbed(model, 1), tmp_path / "out" / "ckpt")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ckpt"]
    verify_checkpoint(directory)
    saved = load_file(str(directory / "adapter_model.safetensors"))
    lora_b = next(p for name, p in model.named_parameters() if "lora_B" in name)
    assert any(torch.equal(tensor, lora_b.detach()) for tensor in saved.values())


def test_training_state_round_trips(tmp_path, tiny_llama):
    state = TrainingState(
        step=3,
        epoch=1,
        batch_in_epoch=2,
        optimizer={"state": {0: {"exp_avg": torch.arange(3.0)}}},
        scheduler={"last_epoch": 3},
        rng={"torch": torch.get_rng_state()},
        extra={"examples_seen": 12},
    )
    directory = save_checkpoint(adapted(tiny_llama), tmp_path / "ckpt", state)
    assert json.loads((directory / "trainer_state.json").read_text()) == {
        "step": 3,
        "epoch": 1,
        "batch_in_epoch": 2,
        "examples_seen": 12,
    }
    assert (directory / "trainer_state.json").read_text() == (
        '{\n  "step": 3,\n  "epoch": 1,\n  "batch_in_epoch": 2,\n  "examples_seen": 12\n}\n'
    )
    loaded = load_training_state(directory)
    assert (loaded.step, loaded.epoch, loaded.batch_in_epoch, loaded.extra) == (3, 1, 2, {"examples_seen": 12})
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], torch.arange(3.0))
    assert loaded.scheduler == {"last_epoch": 3}
    assert torch.equal(loaded.rng["torch"], state.rng["torch"])


def test_a_checkpoint_without_training_state_cannot_resume(tmp_path, tiny_llama):
    directory = save_checkpoint(adapted(tiny_llama), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"trainer_state.json: missing; this checkpoint has no training state"):
        load_training_state(directory)


def test_unreadable_training_state_is_named(tmp_path, tiny_llama):
    state = TrainingState(1, 0, 1, {}, {}, {}, {})
    directory = save_checkpoint(adapted(tiny_llama), tmp_path / "ckpt", state)
    (directory / "training_state.pt").write_bytes(b"not a torch file")
    write_manifest(directory)
    with pytest.raises(CheckpointError, match=r"ckpt/training_state.pt: unreadable training state \(\w+\)$"):
        load_training_state(directory)


def test_list_checkpoints_keeps_complete_step_directories_in_step_order(tmp_path):
    assert list_checkpoints(tmp_path / "absent") == []
    for name in ("checkpoint-10", "checkpoint-9", "checkpoint-2", "checkpoint-x", "other-5"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    (tmp_path / "checkpoint-3").mkdir()  # incomplete: no manifest
    (tmp_path / "checkpoint-4").write_text("a file")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]


def test_export_writes_a_verified_adapter_into_the_output_dir(tmp_path, tiny_llama):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train.log").write_text("kept")
    directory = export_adapter(adapted(tiny_llama), tmp_path / "out")
    manifest = verify_checkpoint(directory)
    assert set(manifest["files"]) == {"adapter_model.safetensors", "adapter_config.json", "README.md"}
    assert sorted(p.name for p in directory.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
        "train.log",
    ]


def test_adapter_base_check(tmp_path):
    with pytest.raises(CheckpointError, match=r"adapter_config.json: missing or not JSON$"):
        check_adapter_base(tmp_path, "org/base")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    check_adapter_base(tmp_path, "org/base")
    check_adapter_base(tmp_path, None)
    with pytest.raises(CheckpointError, match=r"trained on 'org/base', not 'org/other'$"):
        check_adapter_base(tmp_path, "org/other")


def test_adapter_weights_load_back(tmp_path, tiny_llama):
    directory = save_checkpoint(perturbed(adapted(tiny_llama), 0), tmp_path / "ckpt")
    fresh = adapted(tiny_llama)
    load_weights_into(fresh, directory)
    expected = trained(perturbed(adapted(tiny_llama), 0))
    assert all(torch.equal(value, expected[name]) for name, value in trained(fresh).items())


def rewrite_weights(directory, name, change):
    tensors = load_file(str(directory / name))
    save_file(change(tensors), str(directory / name))
    write_manifest(directory)


def test_adapter_with_a_foreign_tensor_is_refused(tmp_path, tiny_llama):
    directory = save_checkpoint(adapted(tiny_llama), tmp_path / "ckpt")
    rewrite_weights(directory, "adapter_model.safetensors", lambda t: t | {"foreign.lora_A.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"1 tensors do not belong to this model, e.g. "):
        load_weights_into(adapted(tiny_llama), directory)


def test_adapter_missing_a_lora_tensor_is_refused(tmp_path, tiny_llama):
    directory = save_checkpoint(adapted(tiny_llama), tmp_path / "ckpt")
    rewrite_weights(directory, "adapter_model.safetensors", lambda t: dict(list(t.items())[1:]))
    with pytest.raises(CheckpointError, match=r"1 LoRA tensors of this model are missing, e.g. .*lora_"):
        load_weights_into(adapted(tiny_llama), directory)


def test_full_weights_load_back(tmp_path, tiny_llama):
    directory = save_checkpoint(perturbed(adapted(tiny_llama, "none"), 0), tmp_path / "ckpt")
    fresh = adapted(tiny_llama, "none")
    load_weights_into(fresh, directory)
    expected = trained(perturbed(adapted(tiny_llama, "none"), 0))
    assert all(torch.equal(value, expected[name]) for name, value in trained(fresh).items())


def test_full_weights_missing_a_tensor_are_refused(tmp_path, tiny_llama):
    directory = save_checkpoint(adapted(tiny_llama, "none"), tmp_path / "ckpt")
    rewrite_weights(directory, "model.safetensors", lambda t: {k: v for k, v in t.items() if "1.mlp.down" not in k})
    with pytest.raises(CheckpointError, match=r"\(missing model.layers.1.mlp.down_proj.weight\)$"):
        load_weights_into(adapted(tiny_llama, "none"), directory)


def test_full_weights_with_a_foreign_tensor_are_refused(tmp_path, tiny_llama):
    directory = save_checkpoint(adapted(tiny_llama, "none"), tmp_path / "ckpt")
    rewrite_weights(directory, "model.safetensors", lambda t: t | {"foreign.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"model.safetensors: does not match this model \(unexpected foreign"):
        load_weights_into(adapted(tiny_llama, "none"), directory)


def test_a_checkpoint_without_weights_is_named(tmp_path, tiny_llama):
    (tmp_path / "ckpt").mkdir()
    write_manifest(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"ckpt: no adapter_model.safetensors or model.safetensors$"):
        load_weights_into(adapted(tiny_llama), tmp_path / "ckpt")


def test_save_creates_missing_parent_directories(tmp_path, tiny_llama):
    directory = save_checkpoint(adapted(tiny_llama), tmp_path / "a" / "b" / "checkpoint-1")
    verify_checkpoint(directory)


def test_save_under_a_file_names_the_os_error(tmp_path, tiny_llama):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(CheckpointError, match=r"could not save \(File exists\); earlier checkpoints are kept$"):
        save_checkpoint(adapted(tiny_llama), tmp_path / "taken" / "checkpoint-1")


class Payload:
    """Not a tensor or plain container: a weights_only load must refuse it."""


def test_training_state_that_would_run_code_is_refused(tmp_path, tiny_llama):
    directory = save_checkpoint(adapted(tiny_llama), tmp_path / "ckpt", TrainingState(1, 0, 1, {}, {}, {}, {}))
    torch.save({"optimizer": {}, "scheduler": {}, "rng": {}, "x": Payload()}, directory / "training_state.pt")
    write_manifest(directory)
    with pytest.raises(CheckpointError, match=r"training_state.pt: unreadable training state \(UnpicklingError\)$"):
        load_training_state(directory)


def test_full_weights_of_another_shape_are_named(tmp_path, tiny_llama):
    directory = save_checkpoint(adapted(tiny_llama, "none"), tmp_path / "ckpt")
    rewrite_weights(directory, "model.safetensors", lambda t: t | {"model.norm.weight": torch.ones(3)})
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: does not fit this model \(size mismatch.*model.norm"
    ):
        load_weights_into(adapted(tiny_llama, "none"), directory)


MISMATCH = "size mismatch for model.norm.weight: copying a param with shape torch.Size([3]), " + "x" * 200


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (f"Error(s) in loading state_dict for LlamaModel:\n\t{MISMATCH}\n\tsize mismatch for b", MISMATCH[:200]),
        ("first line\nsecond line", "first line"),
        ("  \n  first after blank\nsecond", "first after blank"),
        ("y" * 300, "y" * 200),
        ("", ""),
    ],
    ids=["the first size mismatch", "else the first line", "blank lines skipped", "cut at 200", "empty"],
)
def test_a_load_failure_is_told_in_one_line(message, line):
    assert load_failure(RuntimeError(message)) == line


def raising(error):
    def load(*args, **kwargs):
        raise error

    return load


@pytest.mark.parametrize(
    ("error", "told"),
    [
        (RuntimeError("no fit\nmore"), "ckpt/adapter_model.safetensors: does not fit this model (no fit)"),
        (ValueError("bad config\nmore"), "ckpt: PEFT could not load the adapter (ValueError: bad config)"),
        (KeyError(), "ckpt: PEFT could not load the adapter (KeyError: )"),
    ],
)
def test_loading_an_adapter_names_what_failed_in_one_line(tmp_path, tiny_llama, monkeypatch, error, told):
    import peft

    directory = save_checkpoint(adapted(tiny_llama), tmp_path / "ckpt")
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", raising(error))
    with pytest.raises(CheckpointError) as caught:
        load_adapter(load_model(tiny_llama.path), directory)
    assert str(caught.value) == f"{tmp_path}/{told}"


def test_loading_weights_names_what_failed_in_one_line(tmp_path, tiny_llama, monkeypatch):
    import peft

    adapter = save_checkpoint(adapted(tiny_llama), tmp_path / "adapter")
    monkeypatch.setattr(peft, "set_peft_model_state_dict", raising(RuntimeError("no fit\nmore")))
    with pytest.raises(CheckpointError) as caught:
        load_weights_into(adapted(tiny_llama), adapter)
    assert str(caught.value) == f"{adapter}/adapter_model.safetensors: does not fit this model (no fit)"
    full = save_checkpoint(adapted(tiny_llama, "none"), tmp_path / "full")
    model = adapted(tiny_llama, "none")
    monkeypatch.setattr(model, "load_state_dict", raising(RuntimeError("y" * 300 + "\nmore")))
    with pytest.raises(CheckpointError) as caught:
        load_weights_into(model, full)
    assert str(caught.value) == f"{full}/model.safetensors: does not fit this model ({'y' * 200})"
