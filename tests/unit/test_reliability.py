"""Reliability and hostile inputs: integrity checks, refused pickles, full disks, non-finite steps,
out-of-memory messages, and fuzzed config/dataset loaders that raise only the project's error type."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import checkpoint as checkpoint_module
from harness.checkpoint import list_checkpoints, load_adapter, load_weights_into, save_checkpoint, verify_checkpoint
from harness.config import config_from_dict, load_config
from harness.data.sources import load_rows
from harness.errors import CheckpointError, HarnessError, ModelResolutionError, TrainingError
from harness.loading import load_model
from harness.recipe import prepare_run

TINY = [
    "base_model=harness/tiny-random-llama",
    "dataset.num_examples=40",
    "dataset.max_length=320",
    "lora.r=4",
    "training.batch_size=4",
    "training.dtype=float32",
]


def tiny_run(tmp_path, *sets):
    run = prepare_run(load_config(None, TINY + [f"output_dir={tmp_path / 'out'}", *sets]))
    run.build()
    return run


@pytest.fixture
def saved(tmp_path):
    run = tiny_run(tmp_path)
    return run, save_checkpoint(run.model, tmp_path / "ckpt")


def test_truncated_weights_are_named(saved):
    _, directory = saved
    weights = directory / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors: corrupt: \d+ bytes, manifest says \d+$"):
        verify_checkpoint(directory)


def test_missing_file_is_named(saved):
    _, directory = saved
    (directory / "adapter_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"adapter_config.json: missing \(listed in manifest.json\)$"):
        verify_checkpoint(directory)


def test_directory_without_manifest_is_not_a_checkpoint(saved):
    _, directory = saved
    (directory / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest.json"):
        verify_checkpoint(directory)


def test_adapter_of_another_rank_is_a_clear_error(tmp_path):
    other = tiny_run(tmp_path / "r8", "lora.r=8")
    directory = save_checkpoint(other.model, tmp_path / "r8-ckpt")
    run = tiny_run(tmp_path / "r4")
    with pytest.raises(
        CheckpointError, match=r"r8-ckpt/adapter_model.safetensors: does not fit this model \(.*size mismatch"
    ):
        load_weights_into(run.model, directory)
    # An adapter_config.json that disagrees with its tensors (saved for another r) fails plain PEFT too.
    config_path = directory / "adapter_config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"r": 4}))
    checkpoint_module.write_manifest(directory)
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors: does not fit this model \(.*size mismatch"):
        load_adapter(run.load_base(), directory)


def test_adapter_for_another_base_model_is_refused(saved):
    run, directory = saved
    with pytest.raises(CheckpointError, match=r"adapter was trained on 'harness/tiny-random-llama', not 'org/other'"):
        load_adapter(run.load_base(), directory, expected_base="org/other")


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_llama):
    from safetensors.torch import load_file

    snapshot = tmp_path / "pickled"
    snapshot.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (snapshot / name).write_bytes((tiny_llama.path / name).read_bytes())
    torch.save(load_file(str(tiny_llama.path / "model.safetensors")), snapshot / "pytorch_model.bin")
    with pytest.raises(ModelResolutionError, match=r"only pickle weights \(pytorch_model.bin\).*--allow-pickle"):
        load_model(snapshot)
    assert load_model(snapshot, allow_pickle=True).config.hidden_size == 64


def test_full_disk_during_save_keeps_the_previous_checkpoint(saved, monkeypatch, tmp_path):
    run, _ = saved
    first = save_checkpoint(run.model, tmp_path / "out" / "checkpoint-000001")

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_weights", no_space)
    with pytest.raises(
        CheckpointError, match=r"checkpoint-000002: could not save \(No space left on device\); earlier"
    ):
        save_checkpoint(run.model, tmp_path / "out" / "checkpoint-000002")
    verify_checkpoint(first)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["checkpoint-000001"]


def test_skip_nonfinite_skips_and_reports(tmp_path, monkeypatch):
    from harness import training as training_module

    run = tiny_run(tmp_path, "training.max_steps=4", "training.skip_nonfinite=1")
    real_step, calls = training_module.training_step, {"n": 0}

    def nan_on_third_call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise TrainingError("loss is nan")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training_module, "training_step", nan_on_third_call)
    result = run.trainer().train()
    assert result.skipped == [{"step": 3, "error": "loss is nan"}]
    assert [r.step for r in result.history] == [1, 2, 3, 4]
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["type"] == "skipped"] == [3]


def test_without_skip_nonfinite_the_first_bad_step_stops(tmp_path, monkeypatch):
    from harness import training as training_module

    run = tiny_run(tmp_path, "training.max_steps=4")
    monkeypatch.setattr(
        training_module, "training_step", lambda *a, **k: (_ for _ in ()).throw(TrainingError("loss is inf"))
    )
    with pytest.raises(TrainingError, match=r"^step 1: loss is inf; stopped, no checkpoint was saved yet$"):
        run.trainer().train()


def test_out_of_memory_names_the_peak_and_what_to_try(tmp_path, monkeypatch):
    from harness import training as training_module

    run = tiny_run(tmp_path, "training.max_steps=2")

    def out_of_memory(*_args, **_kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training_module, "training_step", out_of_memory)
    with pytest.raises(TrainingError) as caught:
        run.trainer().train()
    message = str(caught.value)
    assert message.startswith("step 1: CUDA out of memory (peak ") and "gradient_checkpointing" in message
    assert "adapter: qlora" in message and "\n" not in message


def test_output_dir_with_a_previous_run_is_not_overwritten(tmp_path):
    from harness.training import prepare_output_dir

    run = tiny_run(tmp_path, "training.max_steps=2", "training.save_steps=1")
    run.trainer().train()
    with pytest.raises(TrainingError, match="holds a previous run"):
        prepare_output_dir(tmp_path / "out", resuming=False, overwrite=False)
    prepare_output_dir(tmp_path / "out", resuming=True, overwrite=False)
    prepare_output_dir(tmp_path / "out", resuming=False, overwrite=True)
    assert list_checkpoints(tmp_path / "out") == [] and not (tmp_path / "out" / "metrics.jsonl").exists()


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=8,
)
config_keys = st.sampled_from(
    [
        "base_model",
        "adapter",
        "lora",
        "quantization",
        "dataset",
        "training",
        "validation",
        "seed",
        "output_dir",
        "unknown",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(config_keys, yaml_values, max_size=5))
def test_fuzzed_config_mappings_raise_only_config_errors(raw):
    try:
        config_from_dict(raw)
    except HarnessError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_fuzzed_config_text_raises_only_config_errors(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except HarnessError:
        pass


row_values = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.lists(st.text(max_size=5), max_size=2)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["instruction", "input", "output", "context", "response", "messages"]),
            row_values,
            max_size=4,
        ),
        max_size=4,
    ),
    st.sampled_from(["alpaca", "dolly", "oasst"]),
)
def test_fuzzed_dataset_rows_raise_only_data_errors(tmp_path, rows, data_type):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    try:
        load_rows(str(path), data_type)
    except HarnessError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=120))
def test_fuzzed_dataset_bytes_raise_only_data_errors(tmp_path, data):
    path = tmp_path / "fuzz.json"
    path.write_bytes(data)
    try:
        load_rows(str(path), "alpaca")
    except HarnessError:
        pass


def test_resume_refuses_a_checkpoint_of_another_base_model(tmp_path):
    run = tiny_run(tmp_path, "training.max_steps=2", "training.save_steps=1")
    checkpoint = run.trainer().train().checkpoints[0]
    config_path = checkpoint / "adapter_config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"base_model_name_or_path": "org/other"}))
    checkpoint_module.write_manifest(checkpoint)
    again = tiny_run(tmp_path / "again", "training.max_steps=2")
    with pytest.raises(CheckpointError, match=r"adapter was trained on 'org/other', not 'harness/tiny-random-llama'$"):
        again.trainer().train(resume_from=checkpoint)
