"""harness.memory on the tiny test Llama: the CUDA rule table and its version guard, the probe's
verdict and levers, the CUDA preflight's decision with a faked free-memory value, and bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from harness.cli import main
from harness.config import config_from_dict
from harness.errors import ConfigError
from harness.memory import cuda_rules
from harness.memory.model_configs import model_config
from harness.memory.predictor import predict
from harness.memory.probe import choose_checkpointing, preflight, probe
from harness.memory.tables import ROWS

TINY = "harness/tiny-random-llama"


def _tiny(length: int = 64, **training: Any) -> Any:
    return config_from_dict(
        {
            "base_model": TINY,
            "adapter": "lora",
            "dataset": {"max_length": length},
            "training": {"batch_size": 2} | training,
        }
    )


def test_installed_versions_are_inside_the_cuda_rule_table() -> None:
    outside = cuda_rules.versions_outside_table(torch.__version__, transformers.__version__)
    print(f"\ntorch {torch.__version__}, transformers {transformers.__version__}: outside {outside}")
    assert outside == []


def test_a_version_outside_the_table_is_named() -> None:
    assert cuda_rules.versions_outside_table("2.14.0+cu130", "5.24.0") == [
        "torch 2.14.0+cu130 (rules checked on 2.11..2.13)"
    ]
    assert cuda_rules.versions_outside_table("2.13.0", "6.0.0") == ["transformers 6.0.0 (rules checked on 5.17..5.24)"]


@pytest.mark.parametrize(
    ("dtype", "mask", "gqa", "backend"),
    [
        (torch.bfloat16, False, True, "flash"),
        (torch.float16, False, False, "flash"),
        (torch.float32, False, True, "math"),
        (torch.float32, False, False, "efficient"),
        (torch.bfloat16, True, False, "efficient"),
        (torch.float32, True, False, "efficient"),
    ],
)
def test_attention_backend_is_cudas_choice(dtype: torch.dtype, mask: bool, gqa: bool, backend: str) -> None:
    assert cuda_rules.attention_backend(dtype, mask, gqa) == backend


def test_every_rule_names_the_versions_it_was_checked_on() -> None:
    assert all(rule.checked_on for rule in cuda_rules.RULES)


def test_probe_reports_breakdown_versions_and_a_fitting_verdict() -> None:
    result = probe(_tiny(), gpu_gib=1.0)
    print(f"\n{json.dumps(result['breakdown_gib'])} peak {result['predicted_peak_gib']} at {result['peak_op']}")
    assert 0 < result["predicted_peak_gib"] < 0.01
    assert set(result["versions"]) == {"torch", "transformers", "peft", "bitsandbytes"}
    assert result["breakdown_gib"]["activations"] > 0 and result["verdict"]["fits"]
    assert result["peak_phase"].startswith("step ")


def test_a_larger_batch_predicts_a_larger_peak() -> None:
    small, large = probe(_tiny())["predicted_peak_gib"], probe(_tiny(batch_size=8))["predicted_peak_gib"]
    print(f"\nbatch 2: {small} GiB, batch 8: {large} GiB")
    assert large > small


def test_a_gpu_too_small_gets_levers_each_predicted() -> None:
    result = probe(_tiny(length=128, batch_size=8), gpu_gib=0.001)
    levers = result["verdict"]["levers"]
    print(f"\n{levers}")
    assert not result["verdict"]["fits"]
    assert [lever["set"] for lever in levers] == [
        "--set training.batch_size=4 --set training.gradient_accumulation_steps=2",
        "--set training.gradient_checkpointing=true",
        "--set dataset.max_length=64",
    ]
    assert all(lever["predicted_peak_gib"] < result["predicted_peak_gib"] for lever in levers)


def test_preflight_passes_a_run_that_fits_the_free_memory() -> None:
    result = preflight(_tiny(), free_gib=1.0)
    assert result["predicted_peak_gib"] < result["free_gib"]


def test_checkpointing_default_is_off_when_the_run_fits_without_it() -> None:
    chosen = choose_checkpointing(_tiny(256), free_gib=1.0)
    assert chosen.training.gradient_checkpointing is False


def test_checkpointing_default_is_on_when_only_the_run_with_it_fits() -> None:
    without, with_it = (
        predict(model_config(TINY), _tiny(256, gradient_checkpointing=flag)).peak_gib for flag in (False, True)
    )
    print(f"\npredicted peak: {without:.5f} GiB without checkpointing, {with_it:.5f} GiB with it")
    assert with_it < without
    assert choose_checkpointing(_tiny(256), free_gib=(with_it + without) / 2).training.gradient_checkpointing is True


def test_configured_checkpointing_is_kept_whatever_the_free_memory() -> None:
    assert (
        choose_checkpointing(_tiny(256, gradient_checkpointing=False), free_gib=1e-9).training.gradient_checkpointing
        is False
    )
    assert (
        choose_checkpointing(_tiny(256, gradient_checkpointing=True), free_gib=1.0).training.gradient_checkpointing
        is True
    )


def test_preflight_refuses_in_one_line_with_the_cheapest_lever() -> None:
    config = _tiny(batch_size=8)
    peak = probe(config)["predicted_peak_gib"]
    with pytest.raises(ConfigError) as caught:
        preflight(config, free_gib=peak * 0.9)
    message = str(caught.value)
    print(f"\n{message}")
    assert "\n" not in message and "exceeds" in message
    assert "cheapest lever: --set training.batch_size=4 --set training.gradient_accumulation_steps=2" in message


def test_cli_probe_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"base_model: {TINY}\nadapter: lora\ndataset:\n  max_length: 32\n")
    assert main(["probe", str(path), "--json", "--set", "training.batch_size=1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["batch_size"] == 1 and result["predicted_peak_gib"] > 0


@pytest.mark.parametrize("gib", ["0", "-1"])
def test_cli_probe_refuses_a_gpu_size_of_zero(gib: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"base_model: {TINY}\n")
    assert main(["probe", str(path), "--gpu-gib", gib]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --gpu-gib: must be a number of GiB > 0") and err.count("\n") == 1


def test_cli_probe_refuses_an_unsupported_architecture(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    path = tmp_path / "run.yaml"
    path.write_text(f"base_model: {model}\n")
    assert main(["probe", str(path)]) == 2
    err = capsys.readouterr().err
    print(err)
    assert "model_type 'gpt2' is not supported by the memory predictor" in err and err.count("\n") == 1


def test_cli_probe_refuses_a_config_missing_fields(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    path = tmp_path / "run.yaml"
    path.write_text(f"base_model: {model}\n")
    assert main(["probe", str(path)]) == 2
    err = capsys.readouterr().err
    print(err)
    assert "config.json lacks required key" in err and err.count("\n") == 1


def test_cli_probe_refuses_a_model_without_a_config_at_hand(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("base_model: nobody/no-such-model\n")
    assert main(["probe", str(path)]) == 2
    assert "no config.json at hand" in capsys.readouterr().err


def test_shipped_configs_are_the_published_shapes() -> None:
    """Literal values from the models' published config.json files."""
    llama2, llama3 = model_config("meta-llama/Llama-2-7b-hf"), model_config("meta-llama/Meta-Llama-3-8B")
    assert (llama2["hidden_size"], llama2["intermediate_size"], llama2["num_key_value_heads"]) == (4096, 11008, 32)
    assert (llama3["vocab_size"], llama3["intermediate_size"], llama3["num_key_value_heads"]) == (128256, 14336, 8)
    assert model_config("TinyLlama/TinyLlama-1.1B-Chat-v1.0")["num_key_value_heads"] == 4


def test_the_document_tables_have_every_row() -> None:
    assert len(ROWS) == 15 and sum(r.model.endswith("SmolLM2-135M") for r in ROWS) == 5


@pytest.mark.parametrize("command", ["train", "validate"])
def test_cli_preflight_on_a_faked_cuda_device_stops_before_loading(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """train/validate on a (faked) CUDA device with 1 KiB free: exit 2, one line, no weights loaded."""
    import harness.loading
    import harness.recipe

    monkeypatch.setattr(harness.loading, "pick_device", lambda preference="auto": torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1024, 80 * 2**30))
    monkeypatch.setattr(harness.recipe, "prepare_run", lambda *a, **k: pytest.fail("weights were loaded"))
    path = tmp_path / "tiny.yaml"
    path.write_text(f"base_model: {TINY}\noutput_dir: {tmp_path / 'out'}\ndataset:\n  max_length: 32\n")
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    print(err)
    assert err.startswith("error: ") and "GiB exceeds the 9.54e-07 GiB free on the GPU" in err and err.count("\n") == 1


@pytest.mark.parametrize("adapter", ["lora", "qlora", "none"])
def test_the_layer_extrapolation_equals_the_full_depth(adapter: str) -> None:
    """The reference is the full depth fake-executed (what the predictor did before it extrapolated):
    8 tiny layers, where full fine-tuning's optimizer state competes with the activations."""
    from harness.memory import predictor

    deep = model_config(TINY) | {"num_hidden_layers": 8}
    config = dataclasses.replace(_tiny(), adapter=adapter)
    prediction = predictor.predict(deep, config)
    on_cuda = dataclasses.replace(
        config,
        training=dataclasses.replace(config.training, gradient_checkpointing=config.gradient_checkpointing("cuda")),
    )
    full = predictor._train_steps(deep, on_cuda, torch.bfloat16, None, 2)
    full_peak = max(peak for peak, _op in full.regions.values())
    print(f"\n{adapter}: extrapolated {prediction.peak_gib * predictor.GIB:.0f} B, full depth {full_peak} B")
    assert prediction.notes == ["extrapolated exactly from (1, 2, 3) of 8 layers"]
    assert abs(prediction.peak_gib * predictor.GIB - full_peak) <= predictor.ONE_OFF_BYTES
    assert prediction.breakdown.base_weights * predictor.GIB == full.statics[0]


def test_a_depth_that_is_not_affine_runs_in_full() -> None:
    """The FAIL side: per-layer sizes that are not affine in the depth are never extrapolated."""
    from harness.memory import predictor

    def run(layers_config: dict[str, Any]) -> Any:
        layers = layers_config["num_hidden_layers"]
        return predictor._Run({"step 1, forward": (layers**2 * 10**6, "aten::mm")}, (0, 0, 0, 0))

    prediction = predictor._extrapolated({"num_hidden_layers": 8}, run)
    print(f"\nquadratic in the depth: {prediction.peak_gib * predictor.GIB:.0f} B, {prediction.notes}")
    assert prediction.peak_gib * predictor.GIB == 64 * 10**6
    assert prediction.notes == ["full depth: the per-layer sizes were not affine"]
